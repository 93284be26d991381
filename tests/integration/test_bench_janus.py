"""The bench's Janus target: Janus starts from a generated config, relays one stream, and stops.

Publishes audio+video with aiortc over Janus's HTTP API (VideoRoom), subscribes one viewer,
checks that decoded frames arrive and that Janus forwarded RTP, then that the process is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import aioice.ice
import aiortc.rtcdtlstransport as aiortc_dtls
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack, VideoStreamTrack

from bench.client import Endpoint, PublishPlan, loadgen
from bench.janus import JanusError, JanusOptions, JanusTarget, janus_binary, media_address
from bench.scenarios import ScenarioConfig, layer_specs
from bench.targets import cpu_count
from sfu.transport.certificate import Certificate
from sfu.transport.dtls import SrtpProfile

pytestmark = [
    pytest.mark.integration,
    # CI installs Janus (Makefile DEB_TEST); elsewhere a missing binary is the only reason to skip.
    pytest.mark.skipif(
        janus_binary() is None and not os.environ.get("CI"),
        reason="Janus is not installed (Debian package 'janus')",
    ),
]

TIMEOUT = 20.0


async def _connected(pc: RTCPeerConnection) -> None:
    deadline = time.monotonic() + TIMEOUT
    while pc.connectionState != "connected":
        assert pc.connectionState != "failed", "peer connection failed"
        assert time.monotonic() < deadline, "peer connection did not connect"
        await asyncio.sleep(0.05)


async def _frames(track: MediaStreamTrack, count: int) -> int:
    for _ in range(count):
        await track.recv()
    return count


def _alive(pid: int) -> bool:
    """Whether ``pid`` names a live (not zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _negotiated_profile(pc: RTCPeerConnection) -> bytes:
    """The DTLS-SRTP profile of a connected aiortc peer (bundled: one DTLS transport)."""
    ssl = pc.getTransceivers()[0].receiver.transport._ssl
    assert ssl is not None, "DTLS not established"
    return bytes(ssl.get_selected_srtp_profile())


# The bench's preferred SRTP profile and the common one: Janus (libsrtp2 with AES-GCM, as
# Debian builds it) negotiates either, whichever the client offers.
PROFILES = [aiortc_dtls.SRTP_AEAD_AES_128_GCM, aiortc_dtls.SRTP_AES128_CM_SHA1_80]


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.openssl_profile.decode())
def test_janus_relays_one_stream_and_stops(monkeypatch: pytest.MonkeyPatch, profile: Any) -> None:
    # Janus never gathers on loopback: both ends use this host's own non-loopback address.
    host = media_address()
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: [host])
    # aiortc offers only this profile, so Janus has to use it.
    monkeypatch.setattr(aiortc_dtls, "SRTP_PROFILES", [profile])
    server_cpu = 0 if cpu_count() >= 2 else None

    async def scenario() -> None:
        target = JanusTarget(server_cpu, JanusOptions(rtp_ports=(31000, 31999)))
        publisher = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        viewer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        await target.start()
        pid = target.pid
        folder = target.folder
        assert pid is not None and _alive(pid)
        assert folder is not None and (folder / "janus.jcfg").exists()
        assert target.media_host == host
        try:
            if server_cpu is not None:
                assert os.sched_getaffinity(pid) == {server_cpu}
            cpu_before = await target.cpu_seconds()
            assert cpu_before is not None

            publisher.addTransceiver(AudioStreamTrack(), direction="sendonly")
            publisher.addTransceiver(VideoStreamTrack(), direction="sendonly")
            await publisher.setLocalDescription(await publisher.createOffer())
            published = await target.publish("bench-room", "caster", publisher.localDescription.sdp)
            answer = published.answer_sdp
            assert answer is not None and "a=ice-lite" in answer
            assert f" {host} " in answer  # Janus's host candidate
            await publisher.setRemoteDescription(RTCSessionDescription(answer, "answer"))
            await _connected(publisher)

            received: dict[str, MediaStreamTrack] = {}
            viewer.on("track", lambda track: received.setdefault(track.kind, track))
            assert target.server_offers
            watching = await target.subscribe("bench-room", "viewer-0", "caster", None)
            offer = watching.offer_sdp
            assert offer is not None and "a=ice-lite" in offer
            await viewer.setRemoteDescription(RTCSessionDescription(offer, "offer"))
            await viewer.setLocalDescription(await viewer.createAnswer())
            await target.answer(watching, viewer.localDescription.sdp)
            await _connected(viewer)
            assert _negotiated_profile(publisher) == profile.openssl_profile
            assert _negotiated_profile(viewer) == profile.openssl_profile

            deadline = time.monotonic() + TIMEOUT
            while set(received) != {"audio", "video"}:
                assert time.monotonic() < deadline, f"viewer got tracks {sorted(received)}"
                await asyncio.sleep(0.05)
            assert await asyncio.wait_for(_frames(received["video"], 10), TIMEOUT) == 10
            assert await asyncio.wait_for(_frames(received["audio"], 10), TIMEOUT) == 10

            # Janus relayed it: the viewer's inbound RTP counts packets, and Janus used CPU.
            stats = await viewer.getStats()
            inbound = [s for s in stats.values() if s.type == "inbound-rtp"]
            assert len(inbound) == 2 and all(s.packetsReceived > 0 for s in inbound)
            assert target.api is not None
            assert {published.handle, watching.handle} <= target.api.webrtc_up
            # /proc counts CPU in ticks (10 ms): a few hundred relayed packets may not reach
            # the next one, so keep watching media flow until it does (bounded).
            deadline = time.monotonic() + TIMEOUT
            while (cpu_after := await target.cpu_seconds()) is not None and cpu_after <= cpu_before:
                assert time.monotonic() < deadline, "Janus used no CPU while relaying"
                await asyncio.wait_for(_frames(received["video"], 5), TIMEOUT)
            assert cpu_after is not None and cpu_after > cpu_before

            # Closing the viewer's session detaches its handle inside Janus.
            await target.close(watching)
            deadline = time.monotonic() + TIMEOUT
            while watching.handle not in target.api.ended:
                assert time.monotonic() < deadline, "Janus did not detach the closed session"
                await asyncio.sleep(0.05)
        finally:
            await viewer.close()
            await publisher.close()
            await target.stop()
        assert target.pid is None
        assert not _alive(pid), "Janus still running after stop()"
        assert not folder.exists(), "config folder left behind"
        await target.stop()  # a second stop is harmless

    asyncio.run(asyncio.wait_for(scenario(), 6 * TIMEOUT))


def _janus_processes(folder: Path) -> list[int]:
    """Live processes whose command line names ``folder`` (Janus started from that config)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if str(folder).encode() in cmdline and _alive(int(proc.name)):
            pids.append(int(proc.name))
    return pids


@pytest.mark.parametrize("pinned", [True, False], ids=["pinned", "unpinned"])
def test_janus_loads_only_videoroom_and_http(pinned: bool) -> None:
    async def scenario() -> None:
        target = JanusTarget(0 if pinned else None)
        await target.start()
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.get(target.base + "/info") as resp,
            ):
                info = await resp.json(content_type=None)
            assert set(info["plugins"]) == {"janus.plugin.videoroom"}
            assert set(info["transports"]) == {"janus.transport.http"}
            assert not info.get("events")
            assert info["ice-lite"] is True and info["ice-tcp"] is False
            assert info["full-trickle"] is False
            assert info["local-ip"] == target.media_host
            # Media handles share one loop thread per CPU Janus may use (one when pinned).
            assert info["static-event-loops"] == (1 if pinned else cpu_count())
            assert target.http_port is not None
            # The API listens on loopback only.
            with socket.socket() as sock:
                assert sock.connect_ex((target.media_host, target.http_port)) != 0
        finally:
            await target.stop()

    asyncio.run(asyncio.wait_for(scenario(), 2 * TIMEOUT))


@pytest.mark.parametrize("keepalive_s", [0.5, 100.0], ids=["keepalives", "none"])
def test_keepalives_hold_the_api_session(keepalive_s: float) -> None:
    """Janus drops an idle API session after ``session_timeout``; keepalives prevent that."""

    async def scenario() -> None:
        options = JanusOptions(session_timeout_s=2, keepalive_s=keepalive_s)
        target = JanusTarget(options=options)
        await target.start()
        try:
            assert target.api is not None
            await asyncio.sleep(6.0)
            if keepalive_s < options.session_timeout_s:
                assert await target.api.attach() > 0
            else:
                with pytest.raises(JanusError, match="458"):  # no such session
                    await target.api.attach()
        finally:
            await target.stop()

    asyncio.run(asyncio.wait_for(scenario(), 2 * TIMEOUT))


def test_failed_start_leaves_nothing_running(tmp_path: Path) -> None:
    async def scenario() -> None:
        # No time to get ready: start() must fail, and stop what it started.
        target = JanusTarget(options=JanusOptions(startup_timeout_s=0.0, keep_folder=True))
        with pytest.raises(JanusError, match="not ready"):
            await target.start()
        assert target.pid is None and target.api is None
        assert target.folder is not None
        assert not _janus_processes(target.folder)
        shutil.rmtree(target.folder)

    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))


def test_janus_dies_with_the_bench() -> None:
    """A bench killed outright (no stop()) takes its Janus with it."""
    script = (
        "import asyncio, sys\n"
        "from bench.janus import JanusTarget\n"
        "async def main():\n"
        "    target = JanusTarget()\n"
        "    await target.start()\n"
        "    print(target.pid, target.folder, flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    bench = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert bench.stdout is not None
        pid_text, folder_text = bench.stdout.readline().split()
        pid, folder = int(pid_text), Path(folder_text)
        assert _alive(pid)
        bench.kill()
        bench.wait(TIMEOUT)
        deadline = time.monotonic() + TIMEOUT
        while _alive(pid):
            assert time.monotonic() < deadline, "Janus outlived the bench"
            time.sleep(0.05)
        assert not _janus_processes(folder)
    finally:
        bench.kill()
        bench.wait(TIMEOUT)
        with contextlib.suppress(NameError):
            shutil.rmtree(folder, ignore_errors=True)


def test_synthetic_clients_through_janus() -> None:
    """The bench's own endpoints and load engine: one simulcast publisher, two subscribers."""

    async def scenario() -> None:
        target = JanusTarget(options=JanusOptions(rtp_ports=(32000, 32999)))
        await target.start()
        endpoints: list[Endpoint] = []
        try:
            assert target.media_host is not None
            cfg = ScenarioConfig(bind_host=target.media_host)
            cert = Certificate.generate()
            profiles = [SrtpProfile.AEAD_AES_128_GCM]
            publisher = Endpoint(cert, PublishPlan(), target.media_host, profiles)
            endpoints.append(publisher)
            published = await target.publish("synthetic", "caster", publisher.offer())
            assert published.answer_sdp is not None
            publisher.apply_remote(published.answer_sdp)
            await publisher.connect()
            assert publisher.profile is SrtpProfile.AEAD_AES_128_GCM
            viewers = []
            for i in range(2):
                viewer = Endpoint(cert, None, target.media_host, profiles)
                endpoints.append(viewer)
                session = await target.subscribe("synthetic", f"viewer-{i}", "caster", None)
                assert session.offer_sdp is not None
                await target.answer(session, viewer.answer(session.offer_sdp))
                await viewer.connect()
                viewers.append(viewer)

            engine = loadgen().Engine(16)
            start = time.monotonic_ns() + 50_000_000
            specs = layer_specs(cfg, publisher)
            sender = engine.add_sender(publisher.sock, publisher.srtp_out, specs, start)
            receivers = [engine.add_receiver(v.sock, v.srtp_in) for v in viewers]
            duration_s = 3.0
            await asyncio.get_running_loop().run_in_executor(None, engine.run, duration_s)
            # What the top simulcast layer ("f", last: rids go low to high) sends in the run.
            top = specs[-1]
            top_packets = top.packets_per_frame * duration_s * 1e9 / top.frame_interval_ns
            assert top_packets > 2 * specs[-2].packets_per_frame * duration_s * 1e9 / (
                specs[-2].frame_interval_ns
            )

            sent = engine.sender_counters(sender)["packets"]
            assert sent > 0
            for index in receivers:
                snapshot = engine.receiver_snapshot(index)
                assert snapshot["srtp_errors"] == 0 and snapshot["bad"] == 0
                # Janus forwards audio and one simulcast layer, each on its own SSRC.
                streams = snapshot["streams"]
                assert len(streams) == 2, streams
                assert all(stream[1] > 0 for stream in streams)
                # Janus picked the top layer (the JSEP rid_order): nearly all of its packets.
                assert max(stream[1] for stream in streams) > 0.6 * top_packets, streams
        finally:
            for endpoint in endpoints:
                endpoint.close()
            await target.stop()

    asyncio.run(asyncio.wait_for(scenario(), 4 * TIMEOUT))
