"""The echo service, socket-free: answers, SSRC mapping, learning by mid, PLI pass-through."""

from __future__ import annotations

import struct

import pytest
from fixture_files import FIXTURES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sfu.echo import EchoService, EchoSession, OfferError
from sfu.packet.extensions import MID_URI
from sfu.packet.rtcp import Pli, ReceiverReport, parse_compound, serialize_compound
from sfu.packet.rtp import RtpPacket, build_extension_block
from sfu.packet.sdp import SessionDescription
from sfu.transport.certificate import Certificate
from sfu.transport.port import CapacityError, MediaPort

CHROMIUM_OFFER = (FIXTURES / "sdp" / "chromium_av_offer.sdp").read_text()
CERT = Certificate.generate()


class FakeTransport:
    """Stands in for a connected WebRtcTransport: records what the session sends."""

    def __init__(self) -> None:
        self.rtp: list[bytes] = []
        self.rtcp: list[bytes] = []

    def send_rtp(self, packet: bytes) -> bool:
        self.rtp.append(packet)
        return True

    def send_rtcp(self, packet: bytes) -> bool:
        self.rtcp.append(packet)
        return True


def service(**limits: int) -> EchoService:
    port = MediaPort(CERT, lambda data, addr: None, **limits)  # type: ignore[arg-type]
    return EchoService(port, [("127.0.0.1", 40000)])


def create(svc: EchoService, offer: str = CHROMIUM_OFFER) -> tuple[EchoSession, SessionDescription]:
    session, answer = svc.create(offer, 0.0)
    return session, SessionDescription.parse(answer)


def rtp(ssrc: int, seq: int = 7, ts: int = 9000, mid: tuple[int, str] | None = None) -> bytes:
    packet = RtpPacket(
        marker=True,
        payload_type=96,
        sequence_number=seq,
        timestamp=ts,
        ssrc=ssrc,
        payload=b"\x90\xe0payload",
    )
    if mid is not None:
        profile, data = build_extension_block([(mid[0], mid[1].encode())])
        packet.extension_profile, packet.extension_data = profile, data
    return packet.serialize()


def test_answer_declares_one_send_stream_per_sendrecv_section() -> None:
    session, answer = create(service())
    assert answer.ice_lite
    out = {echo.out_ssrc for echo in session.echoes.values()}
    assert len(out) == 2 and 0 not in out
    declared = {s.ssrc for m in answer.media for s in m.ssrcs}
    assert declared == out
    assert [m.direction.value for m in answer.media] == ["sendrecv", "sendrecv"]
    # The offer's declared primary SSRCs are bound up front (RTX ones are not echoed).
    assert {echo.in_ssrc for echo in session.echoes.values()} == set(session._by_in)
    assert all(echo.in_ssrc is not None for echo in session.echoes.values())


def test_rtp_comes_back_on_the_new_ssrc_otherwise_untouched() -> None:
    session, _ = create(service())
    echo = session.echoes["1"]
    assert echo.in_ssrc is not None
    fake = FakeTransport()
    packet = rtp(echo.in_ssrc)
    session.on_rtp(fake, packet, 0.0)  # type: ignore[arg-type]
    assert len(fake.rtp) == 1
    back = fake.rtp[0]
    assert struct.unpack_from("!I", back, 8)[0] == echo.out_ssrc
    assert back[:8] == packet[:8] and back[12:] == packet[12:]
    assert session.forwarded == 1


def test_unknown_ssrc_is_learned_from_the_mid_extension_once_per_mid() -> None:
    offer = "".join(
        line + "\r\n" for line in CHROMIUM_OFFER.splitlines() if not line.startswith("a=ssrc")
    )
    assert "a=ssrc" not in offer
    session, answer = create(service(), offer)
    mid_id = next(e.id for m in answer.media for e in m.extmaps if e.uri == MID_URI)
    fake = FakeTransport()
    session.on_rtp(fake, rtp(0xAAAA, mid=(mid_id, "1")), 0.0)  # type: ignore[arg-type]
    assert session.echoes["1"].in_ssrc == 0xAAAA
    # A second SSRC on the same mid (e.g. another simulcast layer) is not echoed.
    session.on_rtp(fake, rtp(0xBBBB, mid=(mid_id, "1")), 0.0)  # type: ignore[arg-type]
    # Neither is a stream naming no mid, or an unknown one.
    session.on_rtp(fake, rtp(0xCCCC), 0.0)  # type: ignore[arg-type]
    session.on_rtp(fake, rtp(0xDDDD, mid=(mid_id, "zz")), 0.0)  # type: ignore[arg-type]
    assert len(fake.rtp) == 1
    assert session.dropped == 3


def test_pli_for_an_echoed_stream_becomes_a_pli_for_the_clients_own_stream() -> None:
    session, _ = create(service())
    echo = session.echoes["1"]
    fake = FakeTransport()
    compound = serialize_compound(
        [ReceiverReport(ssrc=1), Pli(sender_ssrc=1, media_ssrc=echo.out_ssrc)]
    )
    session.on_rtcp(fake, compound, 0.0)  # type: ignore[arg-type]
    assert [parse_compound(p) for p in fake.rtcp] == [
        [Pli(sender_ssrc=echo.out_ssrc, media_ssrc=echo.in_ssrc or 0)]
    ]
    # A PLI about anything else, and malformed RTCP, send nothing.
    other = Pli(sender_ssrc=1, media_ssrc=12345).serialize()
    session.on_rtcp(fake, other, 0.0)  # type: ignore[arg-type]
    session.on_rtcp(fake, b"\x80\xc9\x00\x05junk", 0.0)  # type: ignore[arg-type]
    assert len(fake.rtcp) == 1
    assert session.keyframe_requests == 1 and session.dropped == 1


@pytest.mark.parametrize(
    ("offer", "message"),
    [
        ("not sdp", "bad offer"),
        (CHROMIUM_OFFER.replace("a=fingerprint", "a=x-fingerprint"), "fingerprint"),
        (CHROMIUM_OFFER.replace("a=sendrecv", "a=recvonly"), "sends no media"),
    ],
)
def test_bad_offers_are_refused_precisely_and_leave_no_state(offer: str, message: str) -> None:
    svc = service()
    with pytest.raises(OfferError) as info:
        svc.create(offer, 0.0)
    assert str(info.value)
    if message != "bad offer":
        assert message in str(info.value)
    assert svc.sessions == {}
    assert svc._port.transport_count == 0


def test_capacity_and_delete() -> None:
    svc = service(max_pending=1)
    session, _ = create(svc)
    with pytest.raises(CapacityError):
        create(svc)
    assert svc.delete(session.id, 1.0)
    assert not svc.delete(session.id, 1.0)
    assert svc._port.transport_count == 0
    create(svc)  # the slot is free again


_OFFER_LINES = CHROMIUM_OFFER.splitlines()


@st.composite
def mutated_offers(draw: st.DrawFn) -> str:
    """The real Chromium offer with lines dropped, duplicated, swapped or corrupted."""
    lines = list(_OFFER_LINES)
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["drop", "dup", "swap", "corrupt"]))
        if op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        else:
            cut = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:cut] + draw(st.text(max_size=8))
        if not lines:
            break
    return "".join(line + "\r\n" for line in lines)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(mutated_offers(), st.text(max_size=300)))
def test_any_offer_is_answered_or_refused_with_offer_error_and_no_leak(offer: str) -> None:
    svc = service()
    try:
        session, answer = svc.create(offer, 0.0)
    except OfferError as exc:
        assert str(exc)  # a message for the client
        assert svc._port.transport_count == 0 and svc.sessions == {}
    else:
        assert SessionDescription.parse(answer).ice_lite
        assert svc._port.transport_count == 1
        assert svc.delete(session.id, 0.0)
        assert svc._port.transport_count == 0
