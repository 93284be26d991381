"""Long-running scenarios: a soak at a steady load, and join/leave churn.

``python -m bench soak --duration S [--rate R] [--subscribers N] [--sample T]`` holds the
fanout load for ``S`` seconds and every ``T`` seconds samples the server's resident memory
and open descriptors (``/proc`` of a local server), its gauges and egress loss from
``/metrics`` (real, since the synthetic subscribers send receiver reports), and the window's
loss and latency percentiles as the subscribers measured them. The summary compares the last
minute with the first: RSS growth, windows with any loss, p99 drift. Each window also says
whether the generator itself kept up (the packets it offered against its plan, frames it
skipped as late): a window where it fell behind judges the machine, not the server, and the
summary's ``valid`` is true only when it kept up in every window.

``python -m bench churn --cycles N [--concurrency C]`` repeats a join/leave cycle N times: a
publisher joins over WHIP (ICE + DTLS-SRTP), a viewer over WHEP, both leave with DELETE.
It samples RSS and descriptors along the way and, after the last leave and once the
server's transport gauge is back to 0, compares RSS with the baseline taken after a warm-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp

from bench.client import Endpoint, PublishPlan
from bench.scenarios import (
    Progress,
    ScenarioConfig,
    _self_cpu,
    _Session,
    make_plan,
    measure,
    planned_pps,
)
from bench.targets import SfuTarget
from sfu.transport.certificate import Certificate
from sfu.transport.dtls import SrtpProfile

__all__ = [
    "GENERATOR_KEPT_UP",
    "ChurnResult",
    "SoakResult",
    "generator_kept_up",
    "plot_churn",
    "plot_soak",
    "run_churn",
    "run_soak",
    "server_memory",
    "summarize_soak",
    "write_churn",
    "write_soak",
]

#: The soak's summary compares the first and the last this many seconds.
COMPARE_WINDOW_S: Final = 60.0
#: A soak window counts as offered in full when the generator sent at least this share of
#: the packets its plan called for (and skipped no frame as late): below it the generator
#: itself fell behind (starved of CPU), and the window's loss and latency say nothing about
#: the server.
GENERATOR_KEPT_UP: Final = 0.95
#: Churn: cycles before the baseline is taken (allocator pools, caches, the first rooms).
CHURN_WARMUP_CYCLES: Final = 200
#: Churn: RSS and descriptors are sampled every this many cycles.
CHURN_SAMPLE_EVERY: Final = 250
_GAUGE = re.compile(r"^(sfu_[a-z_]+)(\{[^}]*\})? ([0-9.e+-]+)$", re.MULTILINE)


def server_memory(pid: int | None) -> tuple[int | None, int | None]:
    """(resident set size in bytes, open descriptors) of a local process; None if unknown."""
    if pid is None:
        return None, None
    rss = fds = None
    with contextlib.suppress(OSError, ValueError):
        for line in open(f"/proc/{pid}/status", encoding="ascii"):  # noqa: SIM115
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
                break
    with contextlib.suppress(OSError):
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds


async def scrape(target: SfuTarget) -> dict[str, float]:
    """The ``sfu_*`` samples of the target's ``/metrics``, summed over their labels except
    the direction of the RTP loss counters (``..._egress`` / ``..._ingress`` suffixes)."""
    out: dict[str, float] = {}
    if target.url is None:
        return out
    timeout = aiohttp.ClientTimeout(total=5.0)
    with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(target.url + "/metrics") as resp,
        ):
            text = await resp.text()
        for name, labels, value in _GAUGE.findall(text):
            key = name
            if labels and 'direction="' in labels:
                key += "_" + labels.split('direction="')[1].split('"')[0]
            out[key] = out.get(key, 0.0) + float(value)
    return out


@dataclass(slots=True)
class SoakResult:
    """Samples of a soak and its summary."""

    duration_s: float
    rate: float
    subscriptions: int
    samples: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def generator_kept_up(offered_pps: float, planned: float, late_frames: int) -> bool:
    """Whether the generator offered its planned load in a window (see GENERATOR_KEPT_UP)."""
    return late_frames == 0 and offered_pps >= GENERATOR_KEPT_UP * planned


def summarize_soak(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """First minute against last minute: RSS growth, loss windows, p99 drift; and whether the
    generator kept up in every window (``valid``: only then do loss and latency judge the
    server; windows without the ``generator_kept_up`` field count as kept up)."""
    if not samples:
        return {}
    end = samples[-1]["t"]
    first = [s for s in samples if s["t"] <= samples[0]["t"] + COMPARE_WINDOW_S]
    last = [s for s in samples if s["t"] >= end - COMPARE_WINDOW_S]

    def med(rows: list[dict[str, Any]], key: str) -> float | None:
        return _median([r[key] for r in rows if r.get(key) is not None])

    rss0, rss1 = med(first, "rss_bytes"), med(last, "rss_bytes")
    p99_0 = med(first, "p99_ms")
    p99s = [s["p99_ms"] for s in samples if s.get("p99_ms") is not None]
    return {
        "samples": len(samples),
        "rss_first_minute_bytes": rss0,
        "rss_last_minute_bytes": rss1,
        "rss_growth": None if not rss0 or rss1 is None else round(rss1 / rss0 - 1, 5),
        "fds_first": first[0].get("fds"),
        "fds_last": samples[-1].get("fds"),
        "loss_windows": sum(1 for s in samples if s["loss"] > 0),
        "worst_window_loss": max(s["loss"] for s in samples),
        "p99_first_minute_ms": p99_0,
        "p99_max_ms": max(p99s) if p99s else None,
        "p99_drift": None if not p99_0 or not p99s else round(max(p99s) / p99_0, 3),
        "egress_pps_median": _median([s["egress_pps"] for s in samples]),
        "server_egress_lost": samples[-1].get("server_egress_lost"),
        "generator_behind_windows": sum(1 for s in samples if not s.get("generator_kept_up", True)),
        "loss_windows_generator_kept_up": sum(
            1 for s in samples if s["loss"] > 0 and s.get("generator_kept_up", True)
        ),
        "valid": all(s.get("generator_kept_up", True) for s in samples),
    }


async def run_soak(
    target: SfuTarget, cfg: ScenarioConfig, sample_s: float, progress: Progress
) -> SoakResult:
    """Hold ``cfg``'s fanout load for ``cfg.duration_s`` seconds, sampling every ``sample_s``."""
    plan = make_plan(cfg)
    session = _Session(target, cfg)
    result = SoakResult(cfg.duration_s, cfg.rate, len(plan.subscriptions))
    progress(0.0, f"soak: connecting {len(plan.subscriptions) + len(plan.publishers)} endpoints")
    try:
        await session.setup(plan)
        session.engine.set_rate(cfg.rate)
        planned = planned_pps(session.sender_specs, cfg.rate)
        await session.drive(cfg.warmup_s, lambda _: None)
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < cfg.duration_s:
            before = session.snapshot()
            cpu0, gen0 = await target.cpu_seconds(), _self_cpu()
            w0 = time.monotonic()
            await session.drive(min(sample_s, cfg.duration_s - elapsed), lambda _: None)
            after = session.snapshot()
            window = time.monotonic() - w0
            cpu1, gen1 = await target.cpu_seconds(), _self_cpu()
            step = measure(before, after, window, cfg.rate, (cpu0, cpu1), (gen0, gen1))
            rss, fds = server_memory(target.pid)
            gauges = await scrape(target)
            result.samples.append(
                {
                    "t": round(time.monotonic() - start, 2),
                    "rss_bytes": rss,
                    "fds": fds,
                    "egress_pps": step.egress_pps,
                    "planned_pps": round(planned, 1),
                    "offered_pps": step.sent_pps,
                    "late_frames": step.late_frames,
                    "generator_cpu_util": step.generator_cpu_util,
                    "generator_kept_up": generator_kept_up(
                        step.sent_pps, planned, step.late_frames
                    ),
                    "loss": step.loss,
                    "p50_ms": step.latency_p50_ms,
                    "p99_ms": step.latency_p99_ms,
                    "server_cpu_util": step.server_cpu_util,
                    "receiver_reports": step.receiver_reports,
                    "server_transports": gauges.get("sfu_transports"),
                    "server_egress_expected": gauges.get("sfu_rtp_packets_expected_total_egress"),
                    "server_egress_lost": gauges.get("sfu_rtp_packets_lost_total_egress"),
                    "transport_feedback": step.transport_feedback,
                    "server_transport_feedback": gauges.get(
                        "sfu_transport_feedback_received_total"
                    ),
                    "server_estimates_sum_bps": gauges.get(
                        "sfu_subscriber_estimated_bandwidth_bits_per_second_gsum"
                    ),
                }
            )
            progress(
                min(1.0, (time.monotonic() - start) / cfg.duration_s),
                f"soak x{cfg.rate:g}: rss {0 if rss is None else rss >> 20} MiB, offered "
                f"{step.sent_pps / planned if planned else 0:.0%} of plan",
            )
    finally:
        await session.close()
    result.summary = summarize_soak(result.samples)
    return result


@dataclass(slots=True)
class ChurnResult:
    """RSS along a churn run and the verdict after the last leave."""

    cycles: int
    concurrency: int
    failures: int = 0
    seconds: float = 0.0
    rss_start_bytes: int | None = None
    rss_baseline_bytes: int | None = None
    rss_end_bytes: int | None = None
    #: RSS right after the last leave, before the settle time (the heap trim comes after)
    rss_after_last_leave_bytes: int | None = None
    settle_s: float = 0.0
    fds_baseline: int | None = None
    fds_end: int | None = None
    transports_end: float | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rss_vs_baseline(self) -> float | None:
        if not self.rss_baseline_bytes or self.rss_end_bytes is None:
            return None
        return round(self.rss_end_bytes / self.rss_baseline_bytes - 1, 5)


async def _cycle(target: SfuTarget, cert: Certificate, room: str, n: int) -> None:
    """One publisher and one viewer join (with media transports up), then both leave."""
    profiles = [SrtpProfile.AEAD_AES_128_GCM]
    pub = Endpoint(cert, PublishPlan(audio=True, video=True), "127.0.0.1", profiles)
    sub = Endpoint(cert, None, "127.0.0.1", profiles)
    sessions = []
    try:
        publisher = f"p{n}"
        session = await target.publish(room, publisher, pub.offer())
        sessions.append(session)
        assert session.answer_sdp is not None
        pub.apply_remote(session.answer_sdp)
        await pub.connect()
        session = await target.subscribe(room, f"v{n}", publisher, sub.offer())
        sessions.append(session)
        assert session.answer_sdp is not None
        sub.apply_remote(session.answer_sdp)
        await sub.connect()
    finally:
        for s in reversed(sessions):
            await target.close(s)
        pub.close()
        sub.close()


async def run_churn(
    target: SfuTarget, cycles: int, concurrency: int, progress: Progress, settle_s: float = 0.0
) -> ChurnResult:
    """``cycles`` join/leave cycles, ``concurrency`` at a time; RSS before and after (then
    again ``settle_s`` seconds after the last leave: the server trims its heap after
    sessions end at most once a minute, ``sfu.io.memory``)."""
    result = ChurnResult(cycles, concurrency, settle_s=settle_s)
    cert = Certificate.generate()
    result.rss_start_bytes, _ = server_memory(target.pid)
    gate = asyncio.Semaphore(concurrency)
    done = 0
    t0 = time.monotonic()

    async def one(n: int) -> None:
        nonlocal done
        async with gate:
            try:
                await _cycle(target, cert, f"churn-{n % 16}", n)
            except Exception:
                result.failures += 1
            done += 1
            if done == CHURN_WARMUP_CYCLES:
                result.rss_baseline_bytes, result.fds_baseline = server_memory(target.pid)
            if done % CHURN_SAMPLE_EVERY == 0:
                rss, fds = server_memory(target.pid)
                result.samples.append(
                    {"cycles": done, "t": round(time.monotonic() - t0, 2), "rss_bytes": rss,
                     "fds": fds}
                )  # fmt: skip
                progress(done / cycles, f"churn: {done}/{cycles} cycles")

    await asyncio.gather(*(one(n) for n in range(cycles)))
    result.seconds = round(time.monotonic() - t0, 2)
    # Leaves are asynchronous on the server: wait until its transports are gone.
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        gauges = await scrape(target)
        result.transports_end = gauges.get("sfu_transports")
        if not result.transports_end:
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(1.0)
    result.rss_after_last_leave_bytes, _ = server_memory(target.pid)
    await asyncio.sleep(settle_s)
    result.rss_end_bytes, result.fds_end = server_memory(target.pid)
    if result.rss_baseline_bytes is None:
        result.rss_baseline_bytes, result.fds_baseline = result.rss_start_bytes, None
    return result


def write_soak(path: str, result: SoakResult) -> None:
    """The samples and summary as JSON."""
    doc = {
        "scenario": "soak",
        "duration_s": result.duration_s,
        "rate": result.rate,
        "subscriptions": result.subscriptions,
        "summary": result.summary,
        "samples": result.samples,
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(doc, indent=2) + "\n")


def plot_soak(path: str, result: SoakResult) -> None:
    """RSS, descriptors, loss and latency percentiles against time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t"] for s in result.samples]

    def series(key: str, scale: float = 1.0) -> list[float]:
        return [float("nan") if s.get(key) is None else s[key] * scale for s in result.samples]

    fig, axes = plt.subplots(2, 2, figsize=(12, 7))
    axes[0][0].plot(t, series("rss_bytes", 1 / 2**20))
    axes[0][0].set_title("server RSS (MiB)")
    axes[0][1].plot(t, series("fds"))
    axes[0][1].set_title("server open descriptors")
    axes[1][0].plot(t, series("loss", 100.0))
    axes[1][0].set_title("window loss (%)")
    axes[1][1].plot(t, series("p50_ms"), label="p50")
    axes[1][1].plot(t, series("p99_ms"), "--", label="p99")
    axes[1][1].set_title("one-way latency (ms)")
    axes[1][1].legend()
    for ax in (a for row in axes for a in row):
        ax.set_xlabel("seconds")
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"python -m bench soak: x{result.rate:g}, {result.subscriptions} subscriptions")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_churn(path: str, result: ChurnResult) -> None:
    """The churn run as JSON."""
    doc = {"scenario": "churn", **asdict(result), "rss_vs_baseline": result.rss_vs_baseline}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(doc, indent=2) + "\n")


def plot_churn(path: str, result: ChurnResult) -> None:
    """Server RSS against cycles, with the baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    x = [s["cycles"] for s in result.samples]
    ax.plot(x, [(s["rss_bytes"] or 0) / 2**20 for s in result.samples], marker="o")
    if result.rss_baseline_bytes:
        ax.axhline(result.rss_baseline_bytes / 2**20, linestyle="--", color="grey")
    ax.set_xlabel("join/leave cycles")
    ax.set_ylabel("server RSS (MiB)")
    ax.grid(True, alpha=0.3)
    ax.set_title(f"python -m bench churn: {result.cycles} cycles")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def pymalloc_stats() -> dict[str, int]:
    """CPython's small-object allocator figures (``sys._debugmallocstats``, read from its
    stderr output): arenas held now and at most, bytes in live blocks and in free blocks of
    held pools. An arena (1 MiB) goes back to the system only when all its blocks are free,
    so free bytes spread over many arenas are RSS that no trim returns. Empty when the
    interpreter runs without pymalloc (``PYTHONMALLOC=malloc``)."""
    import sys
    import tempfile

    wanted = {
        "# arenas allocated current": "arenas",
        "# arenas highwater mark": "arenas_highwater",
        "# bytes in allocated blocks": "allocated_bytes",
        "# bytes in available blocks": "free_bytes",
    }
    out: dict[str, int] = {}
    with tempfile.TemporaryFile(mode="w+") as tmp:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        for line in tmp:
            key, _, value = line.partition("=")
            name = wanted.get(key.strip())
            if name is not None:
                out[name] = int(value.strip().replace(",", ""))
    return out


def c_heap_stats() -> dict[str, int]:
    """glibc's ``mallinfo2()``: bytes the C heap holds in use (``in_use``: every ``malloc``
    of the process not served by pymalloc, OpenSSL's included), free inside it (``free``),
    and in separate ``mmap`` chunks (``mmapped``). Empty where the C library lacks it."""
    import ctypes

    class _MallInfo2(ctypes.Structure):
        _fields_ = [  # the ctypes layout of struct mallinfo2
            (name, ctypes.c_size_t)
            for name in (
                "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                "uordblks", "fordblks", "keepcost",
            )
        ]  # fmt: skip

    try:
        fn = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return {}
    fn.restype = _MallInfo2
    info = fn()
    return {"in_use": info.uordblks, "free": info.fordblks, "mmapped": info.hblkhd}


async def churn_in_process(cycles: int, concurrency: int, progress: Progress) -> dict[str, Any]:
    """Churn against a server running inside this process, to tell a leak from fragmentation:
    after a warm-up, Python allocations are traced (``tracemalloc``, the growth of the server's
    own modules is reported by line), and at the end RSS is read before and after glibc's
    ``malloc_trim(0)`` returns free heap pages to the system (RSS that comes back then was
    fragmentation or the allocator's cache, not live data). RSS here includes the generator."""
    import ctypes
    import gc
    import secrets
    import tempfile
    import tracemalloc

    from sfu.app import Server
    from sfu.config import AuditConfig, AuthConfig, Config, HttpConfig, MediaConfig, RoomsConfig

    secret = secrets.token_urlsafe(32)
    config = Config(
        http=HttpConfig(port=0),
        media=MediaConfig(
            udp_port=0,
            max_transports=20000,
            max_pending_transports=2000,
            max_pending_per_source=2000,
            max_pending_per_identity=2000,
        ),
        rooms=RoomsConfig(waiting_room=False, max_participants=1000),
        auth=AuthConfig(jwt_secret=secret, dev_tokens=False),
        audit=AuditConfig(path=tempfile.mkdtemp(prefix="sfu-churn-audit-")),
    )
    server = Server(config)
    await server.start()
    target = SfuTarget(url=f"http://127.0.0.1:{server.http_addresses[0][1]}", jwt_secret=secret)
    await target.start()
    pid = os.getpid()
    libc = ctypes.CDLL("libc.so.6")
    try:
        warm = min(CHURN_WARMUP_CYCLES, cycles)
        await run_churn(target, warm, concurrency, lambda f, label: None)
        gc.collect()
        arenas_base = pymalloc_stats()
        rss_base, _ = server_memory(pid)
        libc.malloc_trim(0)
        rss_base_trimmed, _ = server_memory(pid)
        heap_base = c_heap_stats()
        tracemalloc.start(1)
        base_snapshot = tracemalloc.take_snapshot()
        churn = await run_churn(target, cycles, concurrency, progress)
        gc.collect()
        end_snapshot = tracemalloc.take_snapshot()
        rss_end, _ = server_memory(pid)
        libc.malloc_trim(0)
        rss_trimmed, _ = server_memory(pid)
        traced_now, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        arenas_end = pymalloc_stats()
        libc.malloc_trim(0)
        rss_end_trimmed_untraced, _ = server_memory(pid)
        heap_end = c_heap_stats()
        ours = [tracemalloc.Filter(True, "*/sfu/*")]
        growth = [
            stat
            for stat in end_snapshot.filter_traces(ours).compare_to(
                base_snapshot.filter_traces(ours), "lineno"
            )
            if stat.size_diff > 0
        ][:10]
        return {
            "cycles": cycles,
            "failures": churn.failures,
            "seconds": churn.seconds,
            "transports_end": server.port.transport_count,
            "rooms_end": len(server.rooms.rooms) if server.rooms is not None else None,
            "rss_after_warmup_bytes": rss_base,
            "rss_end_bytes": rss_end,
            "rss_after_malloc_trim_bytes": rss_trimmed,
            "rss_after_warmup_and_trim_bytes": rss_base_trimmed,
            "rss_end_trimmed_without_tracemalloc_bytes": rss_end_trimmed_untraced,
            "c_heap_after_warmup": heap_base,
            "c_heap_end": heap_end,
            "traced_python_bytes_end": traced_now,
            "pymalloc_after_warmup": arenas_base,
            "pymalloc_end": arenas_end,
            "sfu_growth_by_line": [
                {"where": str(s.traceback[0]), "bytes": s.size_diff, "blocks": s.count_diff}
                for s in growth
            ],
        }
    finally:
        await target.stop()
        await server.stop()
