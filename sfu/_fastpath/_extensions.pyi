"""Compiled ``ExtensionRewriter``: the contract of ``sfu.core.header_extensions``'s reference."""

from collections.abc import Mapping

class ExtensionRewriter:
    identity: bool

    def __init__(self, source: Mapping[int, str], dest: Mapping[int, str]) -> None: ...
    def apply(
        self, buf: bytearray, length: int, abs_send_time: int, twcc_seq: int = ...
    ) -> bool: ...
