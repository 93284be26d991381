# The compiled munger has exactly the reference's Python contract (see sfu/core/munger.py; a
# SkipHistory keeps at most 256 runs); the differential tests prove it. Typing the classes as the
# reference's lets code use either one.
from sfu.core.munger import RtpMunger as RtpMunger
from sfu.core.skip_history import SkipHistory as SkipHistory

__all__ = ["RtpMunger", "SkipHistory", "munge_nogil"]

def munge_nogil(
    munger: RtpMunger,
    packet: bytes | bytearray | memoryview,
    in_ext_seq: int,
    now: float,
    dst: bytearray | memoryview,
) -> int: ...
