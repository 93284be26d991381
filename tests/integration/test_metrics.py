"""``GET /metrics`` on a busy server: real media, every label value from a fixed set.

A WHIP publisher and two WHEP viewers (aiortc) make the counters move; a stranger sends junk
to the media port. The scrape must count what happened, stay monotonic when people leave,
and never carry a room name, identity, address or token.
"""

from __future__ import annotations

import asyncio
import math
import socket

import aiohttp
import pytest
from clients import TIMEOUT, running_server
from media_load import PUBLISHER, media_load
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from sfu.metrics.labels import ALLOWED

pytestmark = pytest.mark.integration

ROOM = "metrics-room-secret-name"


async def scrape(base: str, accept: str | None = None) -> tuple[str, str]:
    """(content type, body) of one scrape."""
    headers = {"Accept": accept} if accept else {}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http,
        http.get(f"{base}/metrics", headers=headers) as resp,
    ):
        assert resp.status == 200
        return resp.headers["Content-Type"], await resp.text()


def samples(body: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(body) for s in family.samples]


def value(body: str, name: str, **labels: str) -> float:
    """The one sample called ``name`` with exactly ``labels``."""
    found = [s.value for s in samples(body) if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, found)
    return float(found[0])


def assert_fixed_labels(body: str) -> None:
    """Every label value of every sample comes from the documented fixed sets."""
    for sample in samples(body):
        for label, text in sample.labels.items():
            if label == "le":
                assert text == "+Inf" or math.isfinite(float(text)), sample
                continue
            if sample.name == "sfu_build_info":
                continue  # version and implementation: checked below
            assert label in ALLOWED, (label, sample)
            assert text in ALLOWED[label], (label, text, sample)


def test_metrics_count_real_media_and_carry_no_personal_data() -> None:
    async def scenario() -> None:
        async with running_server() as (server, base):
            async with media_load(base, server.token_secret, ROOM, viewers=2) as load:
                media_port = server.media_address[1]
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
                    for _ in range(7):
                        stranger.sendto(b"\xff" * 40, ("127.0.0.1", media_port))
                await asyncio.sleep(1.5)  # reports, REMB and a few hundred packets
                content_type, body = await scrape(base)
                assert content_type.startswith("text/plain; version=0.0.4")
                assert_fixed_labels(body)
                # Nothing that identifies the meeting or its people, anywhere in the body.
                for secret in (ROOM, PUBLISHER, "viewer-0", "127.0.0.1", server.token_secret):
                    assert secret not in body

                assert value(body, "sfu_rooms") == 1
                assert value(body, "sfu_participants", state="joined", kind="whip") == 1
                assert value(body, "sfu_participants", state="joined", kind="whep") == 2
                assert value(body, "sfu_transports", state="connected") == 3
                assert value(body, "sfu_publications", media="video") == 1
                assert value(body, "sfu_subscriptions", media="audio") == 2
                assert value(body, "sfu_ice_handshake_duration_seconds_count") == 3
                assert value(body, "sfu_dtls_handshake_duration_seconds_count") == 3
                assert value(body, "sfu_ready") == 1
                junk = value(body, "sfu_packets_dropped_total", reason="unknown_unknown_source")
                assert junk == 7
                video_in = value(body, "sfu_rtp_packets_received_total", media="video")
                video_out = value(body, "sfu_rtp_packets_forwarded_total", media="video")
                assert video_in > 20
                # Two viewers: about two copies of each ingested packet (the newest may be
                # in flight, and the first ones went out before the second viewer came).
                assert video_in < video_out <= 2 * video_in
                assert value(body, "sfu_rtp_packets_forwarded_total", media="audio") > 20
                assert value(body, "sfu_datagrams_received_total", kind="rtp") >= video_in
                assert value(body, "sfu_datagrams_sent_total", kind="rtp") >= video_out
                assert value(body, "sfu_datagram_bytes_sent_total", kind="dtls") > 0
                assert value(body, "sfu_forwarding_latency_seconds_count") > 0
                assert value(body, "sfu_event_loop_lag_seconds_count") > 0
                assert value(body, "sfu_rtp_packets_expected_total", direction="ingress") > 0
                implementation = [s for s in samples(body) if s.name == "sfu_build_info"]
                assert implementation[0].labels["implementation"] in ("cython", "python")
                assert value(body, "process_cpu_seconds_total") > 0

                # OpenMetrics by content negotiation.
                content_type, om = await scrape(base, "application/openmetrics-text")
                assert content_type.startswith("application/openmetrics-text")
                assert om.rstrip().endswith("# EOF")

                # A viewer leaves: gauges drop, counters keep what it did.
                await load.stop_viewer(0)
                await asyncio.sleep(0.3)
                _, after = await scrape(base)
                assert value(after, "sfu_participants", state="joined", kind="whep") == 1
                assert value(after, "sfu_subscriptions", media="video") == 1
                for name, media in (
                    ("sfu_rtp_packets_forwarded_total", "video"),
                    ("sfu_rtp_packets_received_total", "audio"),
                ):
                    assert value(after, name, media=media) >= value(body, name, media=media)
                assert value(after, "sfu_rtp_packets_expected_total", direction="egress") >= value(
                    body, "sfu_rtp_packets_expected_total", direction="egress"
                )
            # Everyone gone: the totals are still there.
            await asyncio.sleep(0.3)
            _, empty = await scrape(base)
            assert value(empty, "sfu_rooms") == 0
            assert value(empty, "sfu_rtp_packets_forwarded_total", media="video") >= video_out

    asyncio.run(asyncio.wait_for(scenario(), 6 * TIMEOUT))


def test_metrics_can_be_turned_off() -> None:
    import dataclasses

    from clients import LOOPBACK_CONFIG

    from sfu.config import MetricsConfig

    config = dataclasses.replace(LOOPBACK_CONFIG, metrics=MetricsConfig(enabled=False))

    async def scenario() -> None:
        async with (
            running_server(config) as (_server, base),
            aiohttp.ClientSession() as http,
            http.get(f"{base}/metrics") as resp,
        ):
            assert resp.status == 404

    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))
