"""RTCP sender and receiver statistics for one RTP stream (RFC 3550 §6.4, Appendix A.3, A.8).

:class:`ReceiveStats` watches a stream a publisher sends us and produces the report block the
SFU puts in its receiver reports: loss, extended highest sequence number, interarrival jitter
and LSR/DLSR so the publisher can measure its round-trip time to us.

:class:`SendStats` watches a stream the SFU sends a subscriber: it builds sender reports
(packet and octet counts, an RTP timestamp mapped to NTP wallclock for lip sync) and reads
the subscriber's report blocks about the stream back into loss, jitter and round-trip time.

Sans-I/O: both are handed ``now`` (monotonic seconds); wallclock time, needed only for the
NTP field of a sender report, is passed in separately. State is a few scalars per stream
plus the send times of the last :data:`SR_HISTORY` sender reports.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Protocol

from sfu.core.route_state import RouteState
from sfu.packet.rtcp import ReportBlock, SenderReport
from sfu.packet.seqnum import ts_diff

__all__ = [
    "MAX_JITTER_STEP",
    "NTP_EPOCH_OFFSET",
    "SR_HISTORY",
    "ReceiveStats",
    "SendStats",
    "ntp_short",
    "unix_to_ntp",
]

NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900-01-01 (NTP era 0) to 1970-01-01 (Unix)
SR_HISTORY = 8  # sender reports remembered for matching LSR; several report intervals' worth
#: Fewest packets one :attr:`SendStats.loss` measurement spans. Receivers send a report with
#: every NACK too, and the loss fraction of a few packets is noise, not a measurement.
LOSS_MIN_PACKETS = 100
# A transit-time step beyond this (seconds) is a timestamp discontinuity at the sender (an
# encoder restart, a source switch upstream), not network jitter: it is not fed into the
# estimate, which would otherwise take hundreds of packets to forget it.
MAX_JITTER_STEP = 5.0

_CUMULATIVE_MAX = (1 << 23) - 1  # cumulative lost is a signed 24-bit field (RFC 3550 §6.4.1)
_CUMULATIVE_MIN = -(1 << 23)
_U32 = 0xFFFFFFFF
_DLSR_UNIT = 65536  # DLSR and RTT arithmetic is in 1/65536 s (RFC 3550 §6.4.1)


def unix_to_ntp(wallclock: float) -> int:
    """The 64-bit NTP timestamp (32.32 fixed point since 1900) for Unix time ``wallclock``."""
    seconds = math.floor(wallclock)
    fraction = round((wallclock - seconds) * (1 << 32))
    if fraction >= 1 << 32:  # rounding reached the next second
        seconds += 1
        fraction -= 1 << 32
    return (((seconds + NTP_EPOCH_OFFSET) << 32) | fraction) & 0xFFFFFFFFFFFFFFFF


def ntp_short(ntp_timestamp: int) -> int:
    """The middle 32 bits of a 64-bit NTP timestamp: the LSR field of a report block."""
    return (ntp_timestamp >> 16) & _U32


class ReceiveStats:
    """Reception statistics of one incoming RTP stream, for our receiver report blocks.

    Feed every packet of the stream (retransmissions too, with their original sequence
    number) to :meth:`on_packet` and every sender report about it to
    :meth:`on_sender_report`; :meth:`report_block` then gives the block for the next RR.
    Loss follows RFC 3550 §A.3: expected = highest - lowest + 1, received counts every
    packet including duplicates, so cumulative loss can be negative.
    """

    __slots__ = (
        "_base",
        "_clock_rate",
        "_cycle_origin",
        "_expected_prior",
        "_highest",
        "_jitter",
        "_last_arrival",
        "_last_rtp_ts",
        "_lsr",
        "_lsr_at",
        "_received",
        "_received_prior",
        "ssrc",
    )

    def __init__(self, ssrc: int, clock_rate: int) -> None:
        if clock_rate <= 0:
            raise ValueError("clock_rate must be positive")
        self.ssrc = ssrc
        self._clock_rate = clock_rate
        self._base: int | None = None  # lowest extended sequence number received
        self._highest: int | None = None  # highest extended sequence number received
        self._cycle_origin = 0  # subtracted so the first packet reports 0 wrap cycles
        self._received = 0
        self._expected_prior = 0  # expected and received at the last report (§A.3)
        self._received_prior = 0
        self._jitter = 0.0  # RTP timestamp units, unscaled float rather than A.8's Q4
        self._last_arrival: float | None = None
        self._last_rtp_ts = 0
        self._lsr = 0
        self._lsr_at: float | None = None

    @property
    def packets_received(self) -> int:
        """Packets counted as received, retransmissions and duplicates included."""
        return self._received

    @property
    def packets_expected(self) -> int:
        """Highest minus lowest extended sequence number seen, plus one (0 before any)."""
        if self._base is None or self._highest is None:
            return 0
        return self._highest - self._base + 1

    @property
    def packets_lost(self) -> int:
        """Expected minus received, unclamped; negative when duplicates outnumber losses."""
        return self.packets_expected - self._received

    @property
    def jitter(self) -> float:
        """Interarrival jitter estimate (RFC 3550 §A.8) in RTP timestamp units."""
        return self._jitter

    @property
    def jitter_seconds(self) -> float:
        """Interarrival jitter estimate in seconds."""
        return self._jitter / self._clock_rate

    @property
    def highest_ext_seq(self) -> int | None:
        """The highest extended sequence number received, as passed in; None before any."""
        return self._highest

    def on_packet(
        self, ext_seq: int, rtp_timestamp: int, now: float, is_retransmission: bool = False
    ) -> None:
        """Count one arriving packet; all but retransmissions also feed the jitter estimate.

        A retransmission left the sender long after its RTP timestamp, so its transit time
        says nothing about network jitter.
        """
        if self._highest is None or self._base is None:
            self._base = self._highest = ext_seq
            self._cycle_origin = ext_seq & ~0xFFFF
        elif ext_seq > self._highest:
            self._highest = ext_seq
        elif ext_seq < self._base:  # older than the first packet: now expected too
            self._base = ext_seq
        self._received += 1
        if is_retransmission:
            return
        rtp_timestamp &= _U32
        last = self._last_arrival
        if last is not None:
            # Difference of relative transit times, D(i-1, i) of §6.4.1, in timestamp units.
            d = (now - last) * self._clock_rate - ts_diff(rtp_timestamp, self._last_rtp_ts)
            d = abs(d)
            if d <= MAX_JITTER_STEP * self._clock_rate:
                self._jitter += (d - self._jitter) / 16
        self._last_arrival = now
        self._last_rtp_ts = rtp_timestamp

    def on_sender_report(self, ntp_timestamp: int, now: float) -> None:
        """Remember a sender report about this stream for the LSR/DLSR fields."""
        self._lsr = ntp_short(ntp_timestamp)
        self._lsr_at = now

    def report_block(self, now: float) -> ReportBlock | None:
        """The report block about this stream as of ``now``; None before any packet.

        Starts a new interval for the fraction lost (§A.3), so call it once per report sent.
        """
        if self._highest is None:
            return None
        expected = self.packets_expected
        received = self._received
        expected_interval = expected - self._expected_prior
        lost_interval = expected_interval - (received - self._received_prior)
        self._expected_prior = expected
        self._received_prior = received
        fraction = 0
        if expected_interval > 0 and lost_interval > 0:
            fraction = min((lost_interval << 8) // expected_interval, 0xFF)
        cumulative = min(max(expected - received, _CUMULATIVE_MIN), _CUMULATIVE_MAX)
        dlsr = 0
        if self._lsr_at is not None:
            dlsr = min(max(round((now - self._lsr_at) * _DLSR_UNIT), 0), _U32)
        return ReportBlock(
            ssrc=self.ssrc,
            fraction_lost=fraction,
            cumulative_lost=cumulative,
            highest_seq=(self._highest - self._cycle_origin) & _U32,
            jitter=min(int(self._jitter), _U32),
            lsr=self._lsr,
            dlsr=dlsr,
        )


class SentCounter(Protocol):
    """Per-packet sender counters (``sfu.core.route_state.RouteState`` or its compiled twin)."""

    @property
    def packets_sent(self) -> int: ...
    @property
    def octets_sent(self) -> int: ...
    @property
    def last_rtp_ts(self) -> int: ...
    @property
    def last_at(self) -> float | None: ...
    def on_packet(self, rtp_timestamp: int, payload_bytes: int, now: float) -> None: ...


class SendStats:
    """Sender statistics of one outgoing RTP stream and what its receiver reports about it.

    Count every packet sent with :meth:`on_packet`, build sender reports with
    :meth:`sender_report`, and hand the receiver's report blocks about this SSRC to
    :meth:`on_report_block` to update :attr:`rtt`, :attr:`fraction_lost` and the others.
    """

    __slots__ = (
        "_clock_rate",
        "_loss_base",
        "_sr_sent",
        "cumulative_lost",
        "fraction_lost",
        "jitter_seconds",
        "loss",
        "rtt",
        "sent",
        "ssrc",
    )

    def __init__(self, ssrc: int, clock_rate: int, sent: SentCounter | None = None) -> None:
        """``sent`` holds the per-packet counters; the data plane may share it (it writes
        them without calling back into this object)."""
        if clock_rate <= 0:
            raise ValueError("clock_rate must be positive")
        self.ssrc = ssrc
        self._clock_rate = clock_rate
        self.sent: SentCounter = sent if sent is not None else RouteState()
        # (LSR value, monotonic send time) of recent SRs, newest last.
        self._sr_sent: deque[tuple[int, float]] = deque(maxlen=SR_HISTORY)
        self.rtt: float | None = None  # seconds, from the latest usable report block
        self.fraction_lost = 0.0  # 0..1, from the latest report block
        #: 0..1 over the latest span of at least LOSS_MIN_PACKETS (what to act on).
        self.loss = 0.0
        # (extended highest seq, cumulative lost) where the current loss span began.
        self._loss_base: tuple[int, int] | None = None
        self.cumulative_lost = 0
        self.jitter_seconds = 0.0

    def on_packet(self, rtp_timestamp: int, payload_bytes: int, now: float) -> None:
        """Count one packet sent with ``payload_bytes`` of payload (no header or padding).

        Its timestamp anchors the RTP-to-wallclock mapping unless it is older than the
        current anchor (a retransmission or a packet of an earlier frame), which would make
        the extrapolated timestamp run behind.
        """
        self.sent.on_packet(rtp_timestamp, payload_bytes, now)

    @property
    def packets_sent(self) -> int:
        """Packets sent (unbounded here; the SR carries them modulo 2**32)."""
        return self.sent.packets_sent

    @property
    def octets_sent(self) -> int:
        """Payload octets sent (RFC 3550 §6.4.1)."""
        return self.sent.octets_sent

    def sender_report(self, now: float, wallclock: float) -> SenderReport | None:
        """A sender report (without report blocks) for ``now``; None before any packet.

        ``wallclock`` is the Unix time matching ``now``. The RTP timestamp is the last one
        sent advanced by the time since, so receivers map it to the same instant as the NTP
        timestamp (§6.4.1). The report's send time is remembered for RTT measurement.
        """
        sent = self.sent
        last_at = sent.last_at
        if last_at is None:
            return None
        elapsed = round((now - last_at) * self._clock_rate)
        ntp = unix_to_ntp(wallclock)
        self._sr_sent.append((ntp_short(ntp), now))
        return SenderReport(
            ssrc=self.ssrc,
            ntp_timestamp=ntp,
            rtp_timestamp=(sent.last_rtp_ts + elapsed) & _U32,
            packet_count=sent.packets_sent & _U32,
            octet_count=sent.octets_sent & _U32,
        )

    def on_report_block(self, block: ReportBlock, now: float) -> None:
        """Take the receiver's report block about this stream, arriving at ``now``.

        The round-trip time is A - LSR - DLSR (§6.4.1), with A and LSR taken from our own
        monotonic clock: the time this report arrived and the time we sent the SR it names.
        Blocks with LSR 0 (no SR received yet) or naming an SR we no longer remember leave
        :attr:`rtt` unchanged.
        """
        if block.ssrc != self.ssrc:
            raise ValueError("report block is about another SSRC")
        self.fraction_lost = block.fraction_lost / 256
        self.cumulative_lost = block.cumulative_lost
        base = self._loss_base
        if base is None or block.highest_seq < base[0]:
            self._loss_base = (block.highest_seq, block.cumulative_lost)
        elif (expected := block.highest_seq - base[0]) >= LOSS_MIN_PACKETS:
            lost = block.cumulative_lost - base[1]
            self.loss = min(max(lost, 0) / expected, 1.0)
            self._loss_base = (block.highest_seq, block.cumulative_lost)
        self.jitter_seconds = block.jitter / self._clock_rate
        if block.lsr == 0:
            return
        for lsr, sent_at in reversed(self._sr_sent):
            if lsr == block.lsr:
                rtt_units = round((now - sent_at) * _DLSR_UNIT) - block.dlsr
                self.rtt = max(rtt_units, 0) / _DLSR_UNIT
                return
