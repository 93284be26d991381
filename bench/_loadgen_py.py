"""Pure-Python reference of the load generator's send/receive loops (``_loadgen.pyx``).

Both implementations share this contract (the unit tests compare them on buffers):

* :class:`StreamSpec` describes one synthetic RTP stream (a VP8 simulcast layer or Opus);
  :class:`FrameBuilder` turns it into the plaintext RTP packets of successive frames: one-byte
  header extensions (``mid``, ``rid``, and the 2-byte transport-wide sequence number of
  draft-holmer-rmcat-transport-wide-cc-extensions-01 §2 when the spec has a ``twcc_id``;
  :meth:`FrameBuilder.frame` takes the first one to write) on every packet, a 6-byte VP8
  payload descriptor (15-bit picture id, TL0PICIDX, temporal id; S bit on a frame's first
  packet) followed by the VP8 payload header byte (P bit clear on keyframes), and the send
  time (CLOCK_MONOTONIC ns, 8 bytes big-endian) at :data:`STAMP_OFFSET` bytes into the RTP
  payload, after the descriptor, where an SFU never writes. Opus packets carry the stamp at
  the same offset.
* :class:`RecvStats` accounts for the RTP packets one receiver gets: per SSRC the unique packets,
  duplicates (a 1024-packet window of extended sequence numbers), reordering (a packet older
  than the highest seen), the extended sequence range (loss = range - unique) and the one-way
  latency (receive time - stamp) in a fixed log-spaced histogram (:data:`HIST_EDGES_NS`).
* :func:`classify` demultiplexes a datagram (RFC 7983, RFC 5761): RTP is counted as media;
  STUN, DTLS, RTCP and anything else go back to Python.
* :class:`Engine` runs many endpoints: senders pace their streams' frames (a frame's packets
  in one burst, like an encoder), SRTP-protect and send them, numbering the packets of all
  their streams with one transport-wide sequence; receivers drain their sockets,
  SRTP-unprotect and account. A receiver added with a ``twcc_id`` also records each RTP
  packet's transport-wide sequence number, SSRC and arrival time (at most
  :data:`MAX_ARRIVALS` waiting; more are dropped and counted) for
  :meth:`Engine.take_arrivals`, so Python can send transport-wide CC feedback. Packets of
  a receiver's ``rtx_pt`` (the server's padding-only bandwidth probes, retransmissions) are
  not media: counted apart (``rtx`` in its snapshot) and only their arrival recorded. Non-media
  datagrams are queued for :meth:`Engine.control`.

The compiled module does the same with ``sendmmsg``/``recvmmsg``/``epoll`` and the SRTP kernel
without the GIL; this one is slow but exact, for tests and machines without a compiler.
"""

from __future__ import annotations

import bisect
import errno
import math
import select
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CONTROL_QUEUE",
    "HIST_BUCKETS",
    "HIST_EDGES_NS",
    "KIND_AUDIO",
    "KIND_VIDEO",
    "MAX_ARRIVALS",
    "MAX_SSRCS",
    "PKT_DTLS",
    "PKT_OTHER",
    "PKT_RTCP",
    "PKT_RTP",
    "PKT_STUN",
    "RECV_BAD",
    "RECV_DUPLICATE",
    "RECV_NEW",
    "RECV_REORDERED",
    "RECV_UNTRACKED",
    "STAMP_OFFSET",
    "Engine",
    "FrameBuilder",
    "RecvStats",
    "StreamSpec",
    "bucket_of",
    "check_spec",
    "classify",
    "min_packet_size",
    "percentile_ns",
    "transport_seq",
]

KIND_AUDIO = 0
KIND_VIDEO = 1

#: Bytes into the RTP payload where the 8-byte send stamp sits: after the 6-byte VP8 payload
#: descriptor and the 10-byte VP8 keyframe header (frame tag, start code, size), which
#: SFUs that parse VP8 keyframes (Janus reads the start code and resolution) look at.
STAMP_OFFSET = 16
_VP8_DESCRIPTOR = 6
_VP8_START_CODE = b"\x9d\x01\x2a"
_MIN_PAYLOAD = STAMP_OFFSET + 8
#: Temporal ids of an L1T3 pattern (frame n has TEMPORAL_PATTERN[n % 4]).
TEMPORAL_PATTERN = (0, 2, 1, 2)

#: Latency histogram bucket edges: 10 per decade from 1 µs to 10 s. Bucket 0 is below the
#: first edge, bucket i holds [edge[i-1], edge[i]), the last bucket is >= 10 s.
HIST_EDGES_NS: tuple[int, ...] = tuple(round(1000 * 10 ** (i / 10)) for i in range(71))
HIST_BUCKETS = len(HIST_EDGES_NS) + 1

#: Distinct SSRCs one receiver tracks; packets of further SSRCs are counted as untracked.
MAX_SSRCS = 16
_WINDOW = 1024  # duplicate-detection window, packets (a power of two)

#: Frames of one stream a sender catches up with in one pass of its loop.
MAX_CATCH_UP = 16

#: Non-media datagrams kept for Python at most (more are dropped and counted).
CONTROL_QUEUE = 4096

#: Transport-wide CC arrivals one receiver keeps for :meth:`Engine.take_arrivals` at most
#: (more are dropped and counted): several seconds of one subscriber's packets, far more than
#: the 0.2 s between two takes.
MAX_ARRIVALS = 8192

# classify() results (RFC 7983 first-byte ranges; RFC 5761 for RTCP inside 128..191).
PKT_RTP = 0
PKT_STUN = 1
PKT_DTLS = 2
PKT_RTCP = 3
PKT_OTHER = 4

# RecvStats.account() results.
RECV_NEW = 0
RECV_REORDERED = 1
RECV_DUPLICATE = 2
RECV_UNTRACKED = 3
RECV_BAD = 4

_MAX_PACKET = 1500


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """One synthetic RTP stream: what a real encoder layer or audio track would send."""

    ssrc: int
    payload_type: int
    kind: int = KIND_VIDEO
    #: RTP packet size (header, extensions and payload; SRTP adds its tag on top).
    packet_size: int = 1200
    packets_per_frame: int = 1
    keyframe_packets: int = 1
    frame_interval_ns: int = 33_333_333
    #: Every this many frames is a keyframe (0: only the first and on request).
    keyframe_interval: int = 60
    #: RTP timestamp step per frame (90 kHz video at 30 fps: 3000; Opus 20 ms: 960).
    timestamp_step: int = 3000
    mid_id: int = 0
    mid: bytes = b""
    rid_id: int = 0
    rid: bytes = b""
    #: Simulcast layer (0 lowest); informative only (reports).
    layer: int = 0
    #: One-byte extension id of the transport-wide sequence number (0: not sent).
    twcc_id: int = 0

    def header_size(self) -> int:
        """RTP header plus the one-byte extension block this spec writes."""
        ext = 0
        if self.mid_id and self.mid:
            ext += 1 + len(self.mid)
        if self.rid_id and self.rid:
            ext += 1 + len(self.rid)
        if self.twcc_id:
            ext += 3
        if ext:
            ext = 4 + (ext + 3) // 4 * 4
        return 12 + ext


def min_packet_size(spec: StreamSpec) -> int:
    """Smallest ``packet_size`` that fits the header, descriptor and stamp."""
    return spec.header_size() + _MIN_PAYLOAD


def check_spec(spec: StreamSpec) -> None:
    """Raise ValueError for a spec the builders cannot honour."""
    if not 0 <= spec.ssrc <= 0xFFFFFFFF or not 0 <= spec.payload_type <= 127:
        raise ValueError("ssrc or payload type out of range")
    if spec.kind not in (KIND_AUDIO, KIND_VIDEO):
        raise ValueError("kind must be KIND_AUDIO or KIND_VIDEO")
    if not min_packet_size(spec) <= spec.packet_size <= _MAX_PACKET - 32:
        raise ValueError(f"packet_size must be in [{min_packet_size(spec)}, {_MAX_PACKET - 32}]")
    if not 1 <= spec.packets_per_frame <= 64 or not 1 <= spec.keyframe_packets <= 64:
        raise ValueError("packets per frame must be in [1, 64]")
    if not 0 <= spec.layer <= 7:
        raise ValueError("layer must be in [0, 7]")
    if spec.frame_interval_ns < 1_000_000 or spec.keyframe_interval < 0:
        raise ValueError("frame interval must be >= 1 ms and keyframe interval >= 0")
    for ext_id, value in ((spec.mid_id, spec.mid), (spec.rid_id, spec.rid)):
        if ext_id and not (1 <= ext_id <= 14 and 1 <= len(value) <= 16):
            raise ValueError("extension ids must be 1..14 with 1..16-byte values")
    if not 0 <= spec.twcc_id <= 14:
        raise ValueError("the transport-cc extension id must be 0..14")


class FrameBuilder:
    """Successive frames of one stream as plaintext RTP packets (the sender's per-stream state)."""

    __slots__ = ("frames", "keyframe_pending", "picture_id", "seq", "spec", "timestamp", "tl0")

    def __init__(self, spec: StreamSpec, seq: int = 0, timestamp: int = 0) -> None:
        check_spec(spec)
        self.spec = spec
        self.seq = seq & 0xFFFF
        self.timestamp = timestamp & 0xFFFFFFFF
        self.picture_id = 0
        self.tl0 = 0
        self.frames = 0
        self.keyframe_pending = False

    def request_keyframe(self) -> None:
        """Make the next frame a keyframe (a PLI/FIR from the server)."""
        self.keyframe_pending = True

    def frame(self, now_ns: int, transport_seq: int = 0) -> list[bytes]:
        """The packets of the next frame, each stamped with ``now_ns``; with a ``twcc_id``
        they carry transport-wide sequence numbers from ``transport_seq`` on (mod 2^16)."""
        spec = self.spec
        n = self.frames
        keyframe = n == 0 or self.keyframe_pending
        if spec.keyframe_interval and n % spec.keyframe_interval == 0:
            keyframe = True
        self.keyframe_pending = False
        tid = 0 if keyframe else TEMPORAL_PATTERN[n % 4]
        if tid == 0 and n > 0:
            self.tl0 = (self.tl0 + 1) & 0xFF
        video = spec.kind == KIND_VIDEO
        count = spec.keyframe_packets if (keyframe and video) else spec.packets_per_frame
        out: list[bytes] = []
        for i in range(count):
            out.append(self._packet(i, i == count - 1, keyframe, tid, now_ns, transport_seq + i))
        self.seq = (self.seq + count) & 0xFFFF
        self.timestamp = (self.timestamp + spec.timestamp_step) & 0xFFFFFFFF
        self.picture_id = (self.picture_id + 1) & 0x7FFF
        self.frames = n + 1
        return out

    def _packet(
        self, index: int, marker: bool, keyframe: bool, tid: int, now_ns: int, twcc: int
    ) -> bytes:
        spec = self.spec
        buf = bytearray(spec.packet_size)
        ext = bytearray()
        if spec.mid_id and spec.mid:
            ext += bytes([(spec.mid_id << 4) | (len(spec.mid) - 1)]) + spec.mid
        if spec.rid_id and spec.rid:
            ext += bytes([(spec.rid_id << 4) | (len(spec.rid) - 1)]) + spec.rid
        if spec.twcc_id:
            ext += bytes([(spec.twcc_id << 4) | 1]) + (twcc & 0xFFFF).to_bytes(2, "big")
        buf[0] = 0x90 if ext else 0x80
        buf[1] = (0x80 if marker else 0) | spec.payload_type
        seq = (self.seq + index) & 0xFFFF
        buf[2:4] = seq.to_bytes(2, "big")
        buf[4:8] = self.timestamp.to_bytes(4, "big")
        buf[8:12] = spec.ssrc.to_bytes(4, "big")
        pos = 12
        if ext:
            words = (len(ext) + 3) // 4
            buf[12:16] = b"\xbe\xde" + words.to_bytes(2, "big")
            buf[16 : 16 + len(ext)] = ext
            pos = 16 + words * 4
        if spec.kind == KIND_VIDEO:
            pid = self.picture_id
            buf[pos] = 0x80 | (0x10 if index == 0 else 0)  # X, S (partition 0)
            buf[pos + 1] = 0xE0  # I, L, T
            buf[pos + 2] = 0x80 | (pid >> 8)  # M: 15-bit picture id
            buf[pos + 3] = pid & 0xFF
            buf[pos + 4] = self.tl0
            buf[pos + 5] = tid << 6
            if index == 0:  # the VP8 frame tag (RFC 6386 §9.1): show_frame, P bit (0: key)
                head = pos + _VP8_DESCRIPTOR
                buf[head : head + 3] = b"\x10\x02\x00" if keyframe else b"\x11\x02\x00"
                if keyframe:  # start code, then width and height (little-endian, 14 bits)
                    width, height = 320 << min(spec.layer, 3), 180 << min(spec.layer, 3)
                    buf[head + 3 : head + 6] = _VP8_START_CODE
                    buf[head + 6 : head + 10] = width.to_bytes(2, "little") + height.to_bytes(
                        2, "little"
                    )
        else:
            buf[pos] = 0x78  # Opus TOC: SILK/CELT hybrid-looking config, 20 ms, mono
        buf[pos + STAMP_OFFSET : pos + STAMP_OFFSET + 8] = (now_ns & 0xFFFFFFFFFFFFFFFF).to_bytes(
            8, "big"
        )
        return bytes(buf)


def classify(data: bytes | bytearray | memoryview) -> int:
    """PKT_* kind of one datagram by its first bytes (RFC 7983, RFC 5761)."""
    if len(data) < 1:
        return PKT_OTHER
    b0 = data[0]
    if b0 <= 3:
        return PKT_STUN
    if 20 <= b0 <= 63:
        return PKT_DTLS
    if 128 <= b0 <= 191 and len(data) >= 2:
        return PKT_RTCP if 64 <= (data[1] & 0x7F) <= 95 else PKT_RTP
    return PKT_OTHER


def bucket_of(latency_ns: int) -> int:
    """Histogram bucket of one latency (negative counts as 0)."""
    return bisect.bisect_right(HIST_EDGES_NS, max(0, latency_ns))


def percentile_ns(counts: list[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a histogram, the geometric middle of its bucket; None if
    empty. The first and last buckets report their inner edge."""
    total = sum(counts)
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for i, c in enumerate(counts):
        seen += c
        if seen >= rank:
            if i == 0:
                return float(HIST_EDGES_NS[0])
            if i >= len(HIST_EDGES_NS):
                return float(HIST_EDGES_NS[-1])
            return math.sqrt(HIST_EDGES_NS[i - 1] * HIST_EDGES_NS[i])
    return float(HIST_EDGES_NS[-1])  # pragma: no cover - rank <= total


def _payload_offset(data: bytes | bytearray | memoryview) -> int:
    """Offset of the RTP payload, or -1 if the header does not fit."""
    n = len(data)
    if n < 12 or data[0] >> 6 != 2:
        return -1
    pos = 12 + 4 * (data[0] & 0x0F)
    if data[0] & 0x10:
        if pos + 4 > n:
            return -1
        pos += 4 + 4 * int.from_bytes(data[pos + 2 : pos + 4], "big")
    if pos > n:
        return -1
    return pos


def transport_seq(packet: bytes | bytearray | memoryview, twcc_id: int) -> int:
    """The transport-wide sequence number in the one-byte extension element ``twcc_id`` of an
    RTP packet (RFC 8285 §4.2), or -1 when absent or malformed."""
    n = len(packet)
    if n < 12 or not packet[0] & 0x10 or not 1 <= twcc_id <= 14:
        return -1
    pos = 12 + 4 * (packet[0] & 0x0F)
    if pos + 4 > n or packet[pos] != 0xBE or packet[pos + 1] != 0xDE:
        return -1
    end = pos + 4 + 4 * int.from_bytes(packet[pos + 2 : pos + 4], "big")
    if end > n:
        return -1
    pos += 4
    while pos < end:
        b = packet[pos]
        if b == 0:  # padding between elements
            pos += 1
            continue
        ext_id, size = b >> 4, (b & 0x0F) + 1
        if ext_id == 15 or pos + 1 + size > end:
            return -1
        if ext_id == twcc_id:
            return int.from_bytes(packet[pos + 1 : pos + 3], "big") if size == 2 else -1
        pos += 1 + size
    return -1


class RecvStats:
    """Per-SSRC receive accounting and the latency histogram of one receiver."""

    __slots__ = (
        "bad",
        "bytes",
        "dups",
        "first",
        "highest",
        "hist",
        "reordered",
        "ring",
        "ssrcs",
        "unique",
        "untracked",
    )

    def __init__(self) -> None:
        self.ssrcs: list[int] = []
        self.unique: list[int] = []
        self.dups: list[int] = []
        self.reordered: list[int] = []
        self.first: list[int] = []
        self.highest: list[int] = []
        self.bytes: list[int] = []
        self.ring: list[bytearray] = []
        self.hist = [0] * HIST_BUCKETS
        self.untracked = 0
        self.bad = 0

    def account(self, packet: bytes | bytearray | memoryview, now_ns: int) -> int:
        """Count one plaintext RTP packet received at ``now_ns``; returns a RECV_* code."""
        pos = _payload_offset(packet)
        if pos < 0:
            self.bad += 1
            return RECV_BAD
        seq = int.from_bytes(packet[2:4], "big")
        ssrc = int.from_bytes(packet[8:12], "big")
        try:
            slot = self.ssrcs.index(ssrc)
        except ValueError:
            if len(self.ssrcs) >= MAX_SSRCS:
                self.untracked += 1
                return RECV_UNTRACKED
            slot = len(self.ssrcs)
            self.ssrcs.append(ssrc)
            for series in (self.unique, self.dups, self.reordered, self.bytes):
                series.append(0)
            self.first.append(seq)
            self.highest.append(seq)
            ring = bytearray(_WINDOW)
            ring[seq % _WINDOW] = 1
            self.ring.append(ring)
            self.unique[slot] = 1
            self.bytes[slot] = len(packet)
            self._latency(packet, pos, now_ns)
            return RECV_NEW
        highest = self.highest[slot]
        delta = (seq - highest) & 0xFFFF
        if delta >= 0x8000:
            delta -= 0x10000
        ext = highest + delta
        ring = self.ring[slot]
        self.bytes[slot] += len(packet)
        if ext > highest:
            if ext - highest >= _WINDOW:
                ring[:] = bytes(_WINDOW)
            else:
                for i in range(highest + 1, ext):
                    ring[i % _WINDOW] = 0
            ring[ext % _WINDOW] = 1
            self.highest[slot] = ext
            self.unique[slot] += 1
            code = RECV_NEW
        elif highest - ext < _WINDOW:
            if ring[ext % _WINDOW]:
                self.dups[slot] += 1
                return RECV_DUPLICATE
            ring[ext % _WINDOW] = 1
            self.unique[slot] += 1
            self.reordered[slot] += 1
            code = RECV_REORDERED
        else:  # older than the window: cannot tell a duplicate, count it as reordered
            self.unique[slot] += 1
            self.reordered[slot] += 1
            code = RECV_REORDERED
        if ext < self.first[slot]:
            self.first[slot] = ext
        self._latency(packet, pos, now_ns)
        return code

    def _latency(self, packet: bytes | bytearray | memoryview, pos: int, now_ns: int) -> None:
        if len(packet) - pos >= _MIN_PAYLOAD:
            stamp = int.from_bytes(packet[pos + STAMP_OFFSET : pos + STAMP_OFFSET + 8], "big")
            self.hist[bucket_of(now_ns - stamp)] += 1

    def snapshot(self) -> dict[str, Any]:
        """Counters as plain data: ``streams`` is a list of (ssrc, unique, duplicates,
        reordered, first_ext_seq, highest_ext_seq, bytes); ``hist`` the latency counts."""
        streams = [
            (
                self.ssrcs[i],
                self.unique[i],
                self.dups[i],
                self.reordered[i],
                self.first[i],
                self.highest[i],
                self.bytes[i],
            )
            for i in range(len(self.ssrcs))
        ]
        return {
            "streams": streams,
            "hist": list(self.hist),
            "untracked": self.untracked,
            "bad": self.bad,
        }


@dataclass(eq=False, slots=True)
class _Endpoint:
    sock: socket.socket
    srtp: Any
    builders: list[FrameBuilder]
    due_ns: list[int]
    stats: RecvStats | None
    twcc_id: int = 0
    #: (transport-wide seq, SSRC, arrival ns) waiting for take_arrivals(), and those dropped
    arrivals: list[tuple[int, int, int]] | None = None
    arrivals_dropped: int = 0
    #: the next transport-wide sequence number this sender writes
    transport_seq: int = 0
    #: a receiver's RTX payload type (-1: none) and the RTX packets it got
    rtx_pt: int = -1
    rtx_packets: int = 0
    sent: int = 0
    sent_bytes: int = 0
    send_errors: int = 0
    srtp_errors: int = 0
    late_frames: int = 0


class Engine:
    """Senders and receivers of one run (see the module docstring).

    ``add_sender``/``add_receiver`` take a connected, non-blocking UDP socket and the SRTP
    context for that direction (outbound for a sender, inbound for a receiver); the engine uses
    the context only inside :meth:`run`, so no other thread may touch it meanwhile.
    """

    def __init__(self, max_endpoints: int = 4096) -> None:
        self.max_endpoints = max_endpoints
        self._endpoints: list[_Endpoint] = []
        self._by_fd: dict[int, int] = {}
        self._control: list[tuple[int, bytes]] = []
        self.control_dropped = 0
        self._rate = 1.0
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def _add(self, ep: _Endpoint) -> int:
        if len(self._endpoints) >= self.max_endpoints:
            raise ValueError("too many endpoints")
        fd = ep.sock.fileno()
        if fd in self._by_fd:
            raise ValueError("socket already added")
        self._endpoints.append(ep)
        self._by_fd[fd] = len(self._endpoints) - 1
        return len(self._endpoints) - 1

    def add_sender(
        self, sock: socket.socket, srtp: Any, specs: list[StreamSpec], start_ns: int
    ) -> int:
        """A publisher: its streams' first frames are due at ``start_ns``; returns its index."""
        builders = [FrameBuilder(spec) for spec in specs]
        return self._add(_Endpoint(sock, srtp, builders, [start_ns] * len(builders), None))

    def add_receiver(
        self, sock: socket.socket, srtp: Any, twcc_id: int = 0, rtx_pt: int = -1
    ) -> int:
        """A subscriber: every RTP packet on ``sock`` is unprotected and accounted; with a
        ``twcc_id`` (1..14) its transport-wide sequence number is recorded too; packets of
        payload type ``rtx_pt`` (0..127; -1: none) are counted apart, not accounted."""
        if not 0 <= twcc_id <= 14:
            raise ValueError("the transport-cc extension id must be 0..14")
        if not -1 <= rtx_pt <= 127:
            raise ValueError("the RTX payload type must be 0..127 or -1")
        arrivals: list[tuple[int, int, int]] | None = [] if twcc_id else None
        ep = _Endpoint(sock, srtp, [], [], RecvStats(), twcc_id, arrivals)
        ep.rtx_pt = rtx_pt
        return self._add(ep)

    def take_arrivals(self, index: int) -> list[tuple[int, int, int]]:
        """A receiver's recorded (transport-wide sequence number, SSRC, arrival ns) since the
        last take, in arrival order (empty without a ``twcc_id``)."""
        ep = self._endpoints[index]
        if ep.stats is None:
            raise ValueError("not a receiver")
        if ep.arrivals is None:
            return []
        with self._lock:
            out, ep.arrivals = ep.arrivals, []
        return out

    def arrivals_dropped(self, index: int) -> int:
        """Arrivals a receiver dropped because MAX_ARRIVALS were waiting."""
        return self._endpoints[index].arrivals_dropped

    def set_rate(self, multiplier: float) -> None:
        """Send frames ``multiplier`` times as often as their specs say (find-max's load)."""
        if not 0.01 <= multiplier <= 1000:
            raise ValueError("rate multiplier must be in [0.01, 1000]")
        self._rate = multiplier

    def request_keyframe(self, index: int) -> None:
        """Make the next frame of every video stream of sender ``index`` a keyframe."""
        for b in self._endpoints[index].builders:
            if b.spec.kind == KIND_VIDEO:
                b.request_keyframe()

    def stop(self) -> None:
        """Make a running :meth:`run` return soon (thread-safe)."""
        self._stop.set()

    def control(self) -> list[tuple[int, bytes]]:
        """Take the queued non-media datagrams as (endpoint index, datagram)."""
        with self._lock:
            out, self._control = self._control, []
        return out

    def receiver_snapshot(self, index: int) -> dict[str, Any]:
        """A receiver's :meth:`RecvStats.snapshot` plus its SRTP failures."""
        ep = self._endpoints[index]
        if ep.stats is None:
            raise ValueError("not a receiver")
        snap = ep.stats.snapshot()
        snap["srtp_errors"] = ep.srtp_errors
        snap["rtx"] = ep.rtx_packets
        return snap

    def sender_counters(self, index: int) -> dict[str, int]:
        """Packets and bytes a sender sent, failed sends and frames skipped as late."""
        ep = self._endpoints[index]
        return {
            "packets": ep.sent,
            "bytes": ep.sent_bytes,
            "send_errors": ep.send_errors,
            "late_frames": ep.late_frames,
        }

    def run(self, duration_s: float) -> int:
        """Send and receive for ``duration_s`` (or until :meth:`stop`); returns packets moved."""
        self._stop.clear()
        until = time.monotonic_ns() + int(duration_s * 1e9)
        moved = 0
        socks = {ep.sock.fileno(): ep.sock for ep in self._endpoints}
        poller = select.poll()
        for fd in socks:
            poller.register(fd, select.POLLIN)
        while not self._stop.is_set():
            now = time.monotonic_ns()
            if now >= until:
                break
            next_due = until
            for ep in self._endpoints:
                for k, builder in enumerate(ep.builders):
                    interval = max(1, int(builder.spec.frame_interval_ns / self._rate))
                    burst = 0  # frames due at sub-millisecond intervals go out in bursts
                    while now >= ep.due_ns[k] and burst < MAX_CATCH_UP:
                        moved += self._send_frame(ep, builder, now)
                        burst += 1
                        due = ep.due_ns[k] + interval
                        if due < now - 1_000_000_000:  # more than a second behind: skip ahead
                            ep.late_frames += 1
                            due = now + interval
                        ep.due_ns[k] = due
                    next_due = min(next_due, ep.due_ns[k])
            timeout_ms = max(0, min(5, (next_due - time.monotonic_ns()) // 1_000_000))
            for fd, _ in poller.poll(timeout_ms):
                moved += self._drain(self._by_fd[fd], socks[fd])
        return moved

    def _send_frame(self, ep: _Endpoint, builder: FrameBuilder, now: int) -> int:
        sent = 0
        del now  # the stamp: as close to the send as a frame allows
        packets = builder.frame(time.monotonic_ns(), ep.transport_seq)
        if builder.spec.twcc_id:
            ep.transport_seq = (ep.transport_seq + len(packets)) & 0xFFFF
        for packet in packets:
            wire = ep.srtp.protect_rtp(packet)
            try:
                ep.sock.send(wire)
            except OSError:
                ep.send_errors += 1
                continue
            ep.sent += 1
            ep.sent_bytes += len(wire)
            sent += 1
        return sent

    def _drain(self, index: int, sock: socket.socket) -> int:
        ep = self._endpoints[index]
        moved = 0
        for _ in range(256):
            try:
                data = sock.recv(2048)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in (errno.ECONNREFUSED, errno.EINTR):
                    continue
                break
            now = time.monotonic_ns()
            if ep.stats is not None and classify(data) == PKT_RTP:
                try:
                    plain = ep.srtp.unprotect_rtp(data)
                except Exception:  # SrtpError: counted, never fatal
                    ep.srtp_errors += 1
                    continue
                if len(plain) >= 12 and plain[1] & 0x7F == ep.rtx_pt:
                    ep.rtx_packets += 1
                    code = RECV_UNTRACKED
                else:
                    code = ep.stats.account(plain, now)
                if code != RECV_BAD and ep.arrivals is not None:
                    seq = transport_seq(plain, ep.twcc_id)
                    if seq >= 0:
                        with self._lock:
                            if len(ep.arrivals) < MAX_ARRIVALS:
                                ssrc = int.from_bytes(plain[8:12], "big")
                                ep.arrivals.append((seq, ssrc, now))
                            else:
                                ep.arrivals_dropped += 1
                moved += 1
                continue
            with self._lock:
                if len(self._control) < CONTROL_QUEUE:
                    self._control.append((index, data))
                else:
                    self.control_dropped += 1
        return moved
