"""Data-plane kernels: compiled (Cython) when built, pure-Python references otherwise.

Every kernel exists twice with one contract: ``_<name>.pyx`` (compiled) and ``_<name>_py.py``
(reference). ``SFU_NO_EXTENSIONS=1`` forces the references; ``IMPLEMENTATION`` says which set
is active ("cython" or "python") so logs, metrics and tests can tell.
"""

from __future__ import annotations

import os

IMPLEMENTATION: str
if os.environ.get("SFU_NO_EXTENSIONS", "") not in ("", "0"):
    from sfu._fastpath._rewrite_py import rewrite_rtp

    IMPLEMENTATION = "python"
else:
    try:
        from sfu._fastpath._rewrite import rewrite_rtp
    except ImportError:  # not built (e.g. a source checkout without a compiler)
        from sfu._fastpath._rewrite_py import rewrite_rtp

        IMPLEMENTATION = "python"
    else:
        IMPLEMENTATION = "cython"

__all__ = ["IMPLEMENTATION", "KEEP_MARKER", "MALFORMED", "NO_ROOM", "rewrite_rtp"]

#: ``marker`` argument meaning "leave the marker bit as the publisher sent it".
KEEP_MARKER = -1
#: ``rewrite_rtp`` result: the source is not a well-formed RTP packet.
MALFORMED = -1
#: ``rewrite_rtp`` result: the destination buffer is smaller than the packet.
NO_ROOM = -2
