import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from sfu._fastpath.values import HistoryEntry

Address = tuple[Any, ...]
Datagram = tuple[bytes, Address]
LogRecord = tuple[int, int, int, int, float, int, int, int, int, int]

AUDIO: Final[int]
VP8: Final[int]
F_HEADER_BAD: Final[int]
F_MALFORMED_EXT: Final[int]
F_MALFORMED_PAYLOAD: Final[int]
F_TWCC: Final[int]
F_PADDING: Final[int]
F_KEYFRAME: Final[int]
F_LEVEL: Final[int]
F_VAD: Final[int]
PUMP_BATCH: Final[int]
PUMP_ROUNDS: Final[int]

class RouteState:
    blocked: bool
    forwarded: int
    @property
    def packets_sent(self) -> int: ...
    @property
    def octets_sent(self) -> int: ...
    @property
    def last_rtp_ts(self) -> int: ...
    @property
    def last_at(self) -> float | None: ...
    def on_packet(self, rtp_timestamp: int, payload_bytes: int, now: float) -> None: ...
    def record(
        self,
        out_seq: int,
        in_ext_seq: int,
        timestamp: int,
        layer: int,
        has_vp8: bool,
        picture_id: int,
        tl0picidx: int,
        keyidx: int,
    ) -> None: ...
    def lookup(self, seq: int) -> HistoryEntry | None: ...

class SequenceUnwrapper:
    @property
    def last(self) -> int | None: ...
    def peek(self, value: int) -> int: ...
    def unwrap(self, value: int) -> int: ...

class Forwarder:
    max_transports: int
    max_streams: int
    fast_packets: int
    fast_bytes: int
    slow_packets: int
    ingested_packets: int
    ingested_bytes: int
    sent_packets: int
    sent_bytes: int
    protect_errors: int
    send_errors: int
    log_overflow: int
    relay_overflow: int
    relay_sent: int
    relay_send_errors: int
    impaired_drops: int
    paced_packets: int
    paced_due: float
    relay_in_packets: int
    relay_in_bytes: int
    relay_in_overflow: int
    gso: bool
    gso_sends: int
    def __init__(
        self,
        *,
        clock: Callable[[], float] | None = None,
        sample_mask: int = 63,
        log_capacity: int = 65536,
        max_transports: int = 4096,
        max_streams: int = 16384,
    ) -> None: ...
    def set_transport(
        self,
        handle: int,
        address: Address,
        srtp: Any,
        twcc_id: int = 0,
        level_id: int = 0,
        framed: bool = False,
    ) -> None: ...
    def set_impairment(self, handle: int, drop_every: int) -> None: ...
    def set_pacer(self, handle: int, pacer: Any, history: Any = None) -> None: ...
    def paced_backlog(self) -> list[int]: ...
    def release_backlog(
        self, now: float, sock: socket.socket | None = None
    ) -> list[tuple[bytes, Any]]: ...
    def send_paced(
        self, handle: int, now: float, sock: socket.socket | None = None
    ) -> list[bytes]: ...
    def set_source(self, handle: int, level_id: int = 0) -> None: ...
    def remove_transport(self, handle: int) -> None: ...
    def set_stream(self, handle: int, transport: int, source: Any, kind: int) -> None: ...
    def remove_stream(self, handle: int) -> None: ...
    def set_routes(self, handle: int, routes: Sequence[tuple[Any, int]]) -> None: ...
    def set_relay(self, handle: int, relay: bool) -> None: ...
    def set_relay_outputs(self, handle: int, outputs: Sequence[Any]) -> None: ...
    def drain_relay(self) -> list[tuple[int, bytes, int]]: ...
    def drain_relay_sent(self) -> list[tuple[Any, bytes]]: ...
    def set_relay_input(self, index: int, address: Address, opener: Any) -> None: ...
    def remove_relay_input(self, index: int) -> None: ...
    def set_relay_flows(self, index: int, flows: Mapping[int, int]) -> None: ...
    def relay_input_counts(self, index: int) -> tuple[int, int, int]: ...
    def drain_relay_in(self) -> list[tuple[int, int, bytes]]: ...
    def receive_link(
        self, datagrams: Iterable[Datagram], now: float
    ) -> tuple[list[Datagram], list[Datagram]]: ...
    def pump_link(
        self, sock: socket.socket, now: float, out: socket.socket | None = None
    ) -> tuple[list[Datagram], list[Datagram]]: ...
    def process(
        self, datagrams: Iterable[Datagram], now: float
    ) -> tuple[list[Datagram], list[Datagram]]: ...
    def ingest(
        self,
        packets: Iterable[tuple[int, bytes]],
        now: float,
        sock: socket.socket | None = None,
    ) -> tuple[list[tuple[int, bytes]], list[Datagram]]: ...
    def pump(self, sock: socket.socket, now: float) -> list[Datagram]: ...
    def drain_framed(self) -> list[Datagram]: ...
    def drain_log(self) -> list[LogRecord]: ...
    def drain_latency(self) -> list[float]: ...
