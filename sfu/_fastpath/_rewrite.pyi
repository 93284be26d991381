from typing import TypeAlias

Buffer: TypeAlias = bytes | bytearray | memoryview

def rewrite_rtp(
    src: Buffer,
    dst: Buffer,
    ssrc: int,
    sequence_number: int,
    timestamp: int,
    payload_type: int,
    marker: int,
) -> int: ...
