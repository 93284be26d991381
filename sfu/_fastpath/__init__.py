"""Data-plane kernels: compiled (Cython) when built, pure-Python references otherwise.

Every kernel exists twice with one contract: ``_<name>.pyx`` (compiled) and ``_<name>_py.py``
(reference). ``SFU_NO_EXTENSIONS=1`` forces the references; ``IMPLEMENTATION`` says which set
is active ("cython" or "python") so logs, metrics and tests can tell.
"""

from __future__ import annotations

import importlib.util
import os

from sfu._fastpath._srtp_shared import SrtpError

#: The compiled data-plane modules besides the two imported here (sfu.core.kernels loads them).
COMPILED_MODULES = (
    "_bwe",
    "_cache",
    "_extensions",
    "_forward",
    "_layers",
    "_munger",
    "_pacer",
    "_rtp",
    "_vp8",
)

IMPLEMENTATION: str
if os.environ.get("SFU_NO_EXTENSIONS", "") not in ("", "0"):
    from sfu._fastpath._rewrite_py import rewrite_rtp
    from sfu._fastpath._srtp_py import SrtpContext, derive_key

    IMPLEMENTATION = "python"
else:
    # All compiled or all references: a partial build must not mix the two sets.
    try:
        from sfu._fastpath._rewrite import rewrite_rtp
        from sfu._fastpath._srtp import SrtpContext, derive_key

        for _module in COMPILED_MODULES:
            if importlib.util.find_spec(f"sfu._fastpath.{_module}") is None:
                raise ImportError(f"sfu._fastpath.{_module} is not built")
    except ImportError:  # not built (e.g. a source checkout without a compiler)
        from sfu._fastpath._rewrite_py import rewrite_rtp
        from sfu._fastpath._srtp_py import SrtpContext, derive_key

        IMPLEMENTATION = "python"
    else:
        IMPLEMENTATION = "cython"

__all__ = [
    "IMPLEMENTATION",
    "KEEP_MARKER",
    "MALFORMED",
    "NO_ROOM",
    "SrtpContext",
    "SrtpError",
    "derive_key",
    "rewrite_rtp",
]

#: ``marker`` argument meaning "leave the marker bit as the publisher sent it".
KEEP_MARKER = -1
#: ``rewrite_rtp`` result: the source is not a well-formed RTP packet.
MALFORMED = -1
#: ``rewrite_rtp`` result: the destination buffer is smaller than the packet.
NO_ROOM = -2
