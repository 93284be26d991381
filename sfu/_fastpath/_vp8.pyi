"""Compiled VP8 kernels: the contracts of ``sfu.codecs.vp8`` and ``sfu.core.vp8_munger``."""

from sfu._fastpath.values import Vp8Translation
from sfu.codecs.vp8 import Vp8Descriptor

BytesLike = bytes | bytearray | memoryview

def parse_vp8(buf: BytesLike, offset: int = 0, end: int | None = None) -> Vp8Descriptor: ...
def rewrite_vp8_descriptor(
    buf: bytearray | memoryview,
    offset: int,
    picture_id: int | None,
    tl0picidx: int | None,
    keyidx: int | None,
) -> None: ...

class Vp8Munger:
    switches: int
    dropped_pictures: int
    rejected: int

    def __init__(self, history: int = 64) -> None: ...
    @property
    def last_picture_id(self) -> int | None: ...
    @property
    def last_tl0picidx(self) -> int | None: ...
    @property
    def last_keyidx(self) -> int | None: ...
    def switch_source(self) -> None: ...
    def translate(
        self, desc: Vp8Descriptor, source: int | None = None
    ) -> Vp8Translation | None: ...
    def drop(self, desc: Vp8Descriptor) -> None: ...
    @staticmethod
    def apply(buf: bytearray | memoryview, offset: int, t: Vp8Translation) -> None: ...
    def munge(
        self,
        buf: bytearray | memoryview,
        offset: int = 0,
        end: int | None = None,
        desc: Vp8Descriptor | None = None,
        source: int | None = None,
    ) -> bool: ...
