"""Framed (ICE-TCP) transports in the forwarder, both kernel bundles: egress to them is handed
back by drain_framed() with the address they were registered with, never put on the UDP
path; a framed publisher's media is forwarded from process(); a UDP peer with the same host
and port is another peer. The two implementations return the same bytes."""

from __future__ import annotations

import importlib
from typing import Any

from forwarder_world import PROFILE, PUB_KEY, PUB_SALT, SUB_KEY, SUB_SALT, World, rtp, vp8_payload

from sfu._fastpath import _srtp_py
from sfu.core.kernels import REFERENCE, Kernels

TCP_SUB = ("127.0.0.1", 6001, "tcp")  # the host and port of subscriber 1's UDP address
TCP_PUB = ("127.0.0.1", 5000, "tcp")  # the publisher's host and port, over ICE-TCP


class _Srtp:
    def __init__(self, srtp: Any, key: bytes, salt: bytes) -> None:
        self.inbound = srtp.SrtpContext(PROFILE, key, salt, outbound=False)
        self.outbound = srtp.SrtpContext(PROFILE, SUB_KEY, SUB_SALT, outbound=True)


def _srtp_module(kernels: Kernels) -> Any:
    return _srtp_py if kernels.name == "python" else importlib.import_module("sfu._fastpath._srtp")


def _packets(n: int) -> list[bytes]:
    client = _srtp_py.SrtpContext(PROFILE, PUB_KEY, PUB_SALT, outbound=True)
    out = []
    for i in range(n):
        payload = vp8_payload(1 + i, 0, 0, i == 0, True, True, 200)
        out.append(client.protect_rtp(rtp(0x1111, i, 3000 * i, 96, payload, b"")))
    return out


def _run(kernels: Kernels, publisher_over_tcp: bool) -> tuple[Any, ...]:
    world = World(kernels)
    srtp = _srtp_module(kernels)
    f = world.forwarder
    # Subscriber 1 (transport 2) is on ICE-TCP; subscribers 0 and 2 stay on UDP.
    f.set_transport(2, TCP_SUB, _Srtp(srtp, PUB_KEY, PUB_SALT), framed=True)
    pub_addr: tuple[Any, ...] = ("127.0.0.1", 5000)
    if publisher_over_tcp:
        f.set_transport(0, TCP_PUB, _Srtp(srtp, PUB_KEY, PUB_SALT), 3, 5, framed=True)
        pub_addr = TCP_PUB
    for sub in world.video_subs:
        sub.selector.set_target(0, None)
    egress: list[tuple[bytes, Any]] = []
    slow: list[tuple[bytes, Any]] = []
    for packet in _packets(5):
        more_slow, more_egress = f.process([(packet, pub_addr)], 1.0)
        slow += more_slow
        egress += more_egress
    framed = f.drain_framed()
    # Over UDP from the publisher's host and port while it is registered over TCP: not it.
    stray, _ = f.process([(_packets(1)[0], ("127.0.0.1", 5000))], 1.0)
    return (
        [(bytes(d), tuple(a)) for d, a in egress],
        [(bytes(d), tuple(a)) for d, a in framed],
        len(slow),
        len(stray) if publisher_over_tcp else 1,
        f.drain_framed(),
    )


def test_framed_egress_is_handed_back_in_both_implementations(
    compiled_kernels: Kernels,
) -> None:
    for over_tcp in (False, True):
        reference = _run(REFERENCE, over_tcp)
        compiled = _run(compiled_kernels, over_tcp)
        assert reference == compiled
        egress, framed, slow, stray, leftover = reference
        assert slow == 0 and stray == 1 and leftover == []
        assert len(framed) == 5 and all(a == TCP_SUB for _, a in framed)
        assert len(egress) == 10 and all(
            a in (("127.0.0.1", 6000), ("127.0.0.1", 6002)) for _, a in egress
        )


def test_framed_reference_alone(kernels: Kernels) -> None:
    """The application's bundle on its own (the python run has no compiled one)."""
    egress, framed, slow, stray, _ = _run(kernels, True)
    assert (len(egress), len(framed), slow, stray) == (10, 5, 0, 1)
