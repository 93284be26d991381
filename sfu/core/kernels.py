"""The per-packet classes the forwarding path uses, compiled or reference, chosen once.

The compiled build replaces each class with a Cython twin of the same contract whose state
lives in C, so that the compiled forwarder (``sfu._fastpath._forward``) can run the whole
per-packet path without the GIL; the control plane calls the same Python methods on either.
``sfu._fastpath.IMPLEMENTATION`` decides for all of them together.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sfu import _fastpath

__all__ = [
    "ExtensionRewriter",
    "Forwarder",
    "RetransmissionBuffer",
    "RouteState",
    "RtpMunger",
    "SequenceUnwrapper",
    "SimulcastSelector",
    "Vp8Munger",
]

if TYPE_CHECKING or _fastpath.IMPLEMENTATION == "python":
    from sfu._fastpath._forward_py import Forwarder
    from sfu.core.header_extensions import ExtensionRewriter
    from sfu.core.layers import SimulcastSelector
    from sfu.core.munger import RtpMunger
    from sfu.core.retransmission import RetransmissionBuffer
    from sfu.core.route_state import RouteState
    from sfu.core.vp8_munger import Vp8Munger
    from sfu.packet.seqnum import SequenceUnwrapper
else:
    from sfu._fastpath._cache import RetransmissionBuffer
    from sfu._fastpath._extensions import ExtensionRewriter
    from sfu._fastpath._forward import Forwarder, RouteState, SequenceUnwrapper
    from sfu._fastpath._layers import SimulcastSelector
    from sfu._fastpath._munger import RtpMunger
    from sfu._fastpath._vp8 import Vp8Munger
