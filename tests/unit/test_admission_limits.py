"""Admission limits without sockets: pending transports per source and identity, and the
HTTP connection limiter's bookkeeping (the listener itself is tested with real sockets in
``tests/integration/test_http_flood.py``)."""

from __future__ import annotations

import functools
import logging

import pytest

from sfu.io.http_limits import (
    CLOSED_HEADER_TIMEOUT,
    LOG_INTERVAL_S,
    REFUSED_MAX,
    REFUSED_PER_SOURCE,
    ConnectionLimiter,
    ConnectionLimits,
    HttpLimitCounters,
)
from sfu.transport.certificate import Certificate
from sfu.transport.dtls import DtlsRole
from sfu.transport.port import (
    REFUSED_PENDING,
    REFUSED_PENDING_IDENTITY,
    REFUSED_PENDING_SOURCE,
    REFUSED_TOTAL,
    CapacityError,
    MediaPort,
)
from sfu.transport.transport import TransportState


@functools.cache
def _cert() -> Certificate:
    return Certificate.generate()


def _port(**kwargs: int | float) -> MediaPort:
    return MediaPort(_cert(), lambda data, addr: None, **kwargs)  # type: ignore[arg-type]


def _offer(
    port: MediaPort, now: float, source: str | None = None, identity: str | None = None
) -> object:
    return port.create_transport(
        remote_ufrag="abcd",
        remote_fingerprints=[_cert().fingerprint],
        dtls_role=DtlsRole.SERVER,
        now=now,
        source=source,
        identity=identity,
    )


def test_one_source_cannot_take_every_pending_place() -> None:
    port = _port(max_pending=50, max_pending_per_source=5, max_pending_per_identity=100)
    for i in range(5):
        _offer(port, 0.0, source="10.0.0.1", identity=f"bot{i}")
    with pytest.raises(CapacityError) as refused:
        _offer(port, 0.0, source="10.0.0.1", identity="bot99")
    assert refused.value.reason == REFUSED_PENDING_SOURCE
    # Another source joins at once; the flooding one is refused every time.
    _offer(port, 0.0, source="10.0.0.2", identity="alice")
    for _ in range(195):
        with pytest.raises(CapacityError):
            _offer(port, 0.1, source="10.0.0.1", identity="bot")
    assert port.refused[REFUSED_PENDING_SOURCE] == 196
    assert port.pending_count == 6


def test_one_identity_cannot_take_every_pending_place() -> None:
    port = _port(max_pending=50, max_pending_per_source=50, max_pending_per_identity=2)
    _offer(port, 0.0, source="10.0.0.1", identity="mallory")
    _offer(port, 0.0, source="10.0.0.2", identity="mallory")
    with pytest.raises(CapacityError) as refused:
        _offer(port, 0.0, source="10.0.0.3", identity="mallory")
    assert refused.value.reason == REFUSED_PENDING_IDENTITY
    _offer(port, 0.0, source="10.0.0.3", identity="bob")
    assert port.refused == {
        REFUSED_TOTAL: 0,
        REFUSED_PENDING: 0,
        REFUSED_PENDING_SOURCE: 0,
        REFUSED_PENDING_IDENTITY: 1,
    }


def test_global_caps_still_apply_and_places_come_back_after_the_ice_deadline() -> None:
    port = _port(max_pending=3, max_pending_per_source=3, connect_timeout=10.0)
    for i in range(3):
        _offer(port, 0.0, source=f"10.0.0.{i}")
    with pytest.raises(CapacityError) as refused:
        _offer(port, 1.0, source="10.0.0.9")
    assert refused.value.reason == REFUSED_PENDING
    # Never a single check: they fail at the ICE deadline and free their places.
    port.poll(9.9)
    assert port.pending_count == 3
    port.poll(10.0)
    assert port.pending_count == 0 and port.transport_count == 0
    kept = [_offer(port, 10.0, source="10.0.0.1") for _ in range(3)]
    assert all(t.state is TransportState.NEW for t in kept)  # type: ignore[attr-defined]
    total = _port(max_transports=1)
    _offer(total, 0.0)
    with pytest.raises(CapacityError) as full:
        _offer(total, 0.0)
    assert full.value.reason == REFUSED_TOTAL and total.refused[REFUSED_TOTAL] == 1


def test_offers_without_source_or_identity_meet_only_the_global_caps() -> None:
    port = _port(max_pending=10, max_pending_per_source=1, max_pending_per_identity=1)
    for _ in range(10):
        _offer(port, 0.0)
    with pytest.raises(CapacityError) as refused:
        _offer(port, 0.0)
    assert refused.value.reason == REFUSED_PENDING


def test_connection_limiter_caps_in_all_and_per_source(caplog: pytest.LogCaptureFixture) -> None:
    limiter = ConnectionLimiter(ConnectionLimits(5, 2, 10.0, frozenset({"10.9.9.9"})))
    caplog.set_level(logging.INFO, logger="sfu.io.http_limits")
    assert limiter.admit("10.0.0.1", 0.0) and limiter.admit("10.0.0.1", 0.0)
    assert not limiter.admit("10.0.0.1", 0.0)  # per source
    assert limiter.admit("10.9.9.9", 0.0) and limiter.admit("10.9.9.9", 0.0)
    assert limiter.admit("10.9.9.9", 0.0)  # a trusted proxy is exempt per source...
    assert not limiter.admit("10.0.0.2", 0.0)  # ...but not from the total
    assert limiter.refused == {REFUSED_MAX: 1, REFUSED_PER_SOURCE: 1, CLOSED_HEADER_TIMEOUT: 0}
    limiter.release("10.0.0.1")
    assert limiter.admit("10.0.0.2", 0.0)
    for source in ("10.0.0.1", "10.0.0.2", "10.9.9.9", "10.9.9.9", "10.9.9.9"):
        limiter.release(source)
    assert limiter.open == 0 and limiter.per_source == {}
    # Logged once per interval, with counts and without addresses.
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "10.0.0" not in lines[0] and REFUSED_PER_SOURCE in lines[0]
    for _ in range(100):
        limiter.count(CLOSED_HEADER_TIMEOUT, 1.0)
    assert len(caplog.records) == 1
    limiter.count(CLOSED_HEADER_TIMEOUT, 1.0 + LOG_INTERVAL_S)
    assert len(caplog.records) == 2 and "header_timeout=101" in caplog.records[1].getMessage()
    counters = HttpLimitCounters([limiter, ConnectionLimiter(limiter.limits, "ops")])
    assert counters.refused[CLOSED_HEADER_TIMEOUT] == 101
    assert counters.open_connections() == {"http": 0, "ops": 0}
