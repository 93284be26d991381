"""``python -m bench <scenario>``: load-test an SFU with synthetic WebRTC publishers/subscribers.

Without ``--target`` the bench starts our server on loopback (pinned to one CPU with
``taskset`` when there are two or more, the generator on another); with ``--target URL`` it
loads a running deployment (``--jwt-secret`` signs the join tokens). ``--vs janus`` runs the
same load against Janus VideoRoom as well and reports both and their ratios. ``--cluster``
starts a redis-server and two linked nodes and runs the load across them (publishers on one,
subscribers on the other), then on one node, and compares the two (:mod:`bench.cluster`).

``python -m bench adaptation`` is different: Chromium subscribers in network namespaces behind
a shaped downlink go through capacity phases (see :mod:`bench.adaptation`; needs root).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from bench.client import HandshakeError
from bench.report import ProgressBar, format_table, write_json, write_plot
from bench.scenarios import (
    FEEDBACK_WARMUP_S,
    P99_BOUND_MS,
    SCENARIOS,
    WARMUP_S,
    RunResult,
    ScenarioConfig,
    run_scenario,
)
from bench.soak import (
    churn_in_process,
    plot_churn,
    plot_soak,
    run_churn,
    run_soak,
    write_churn,
    write_soak,
)
from bench.targets import SfuTarget, Target, TargetError, cpu_count

__all__ = ["LONG_RUNS", "main", "parse_args"]

#: Scenarios that run one long session against our server (``bench/soak.py``).
LONG_RUNS = ("soak", "churn")


def _rates(text: str) -> tuple[float, ...]:
    """``--rates 1,3,6``: the rate multipliers of the steps."""
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see ``python -m bench --help``)."""
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Load-test an SFU with synthetic WebRTC publishers and subscribers.",
    )
    p.add_argument("scenario", choices=(*SCENARIOS, *LONG_RUNS, "adaptation"))
    p.add_argument("--target", metavar="URL", help="a running server (default: start one locally)")
    p.add_argument(
        "--jwt-secret",
        default=os.environ.get("SFU_AUTH_JWT_SECRET"),
        help="the target's JWT secret for join tokens (default: $SFU_AUTH_JWT_SECRET)",
    )
    p.add_argument("--vs", choices=["janus"], help="also run the same load against Janus")
    p.add_argument(
        "--cluster",
        action="store_true",
        help="two clustered nodes (a redis-server, a QUIC link): publishers on node A, "
        "subscribers on node B; then the same load all on node A as the baseline",
    )
    p.add_argument(
        "--clustered",
        action="store_true",
        help="our local server is a clustered node (a redis-server and a node certificate "
        "made for the run); with --workers each worker is a cluster member, so a --spread "
        "room relays over the workers' node links instead of the worker pipes",
    )
    p.add_argument(
        "--find-max",
        action="store_true",
        help="raise the load while loss <= 0.1%% and p99 latency <= --p99-bound-ms",
    )
    p.add_argument(
        "--p99-bound-ms",
        type=float,
        default=P99_BOUND_MS,
        help=f"find-max: sustained only with p99 latency (ms) under this ({P99_BOUND_MS:g})",
    )
    p.add_argument(
        "--rooms",
        type=int,
        default=1,
        help="run this many rooms of the scenario at once (default 1: one room)",
    )
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--plot", metavar="FILE", help="PNG plot (default: next to --json)")
    p.add_argument(
        "--subscribers",
        type=int,
        help="fanout viewers (default 50); adaptation: synthetic unshaped viewers (default 10)",
    )
    p.add_argument(
        "--impaired",
        type=int,
        default=1,
        help="adaptation: Chromium viewers behind the shaped link",
    )
    p.add_argument(
        "--phase-seconds", type=float, help="adaptation: seconds per phase (default 15-20)"
    )
    p.add_argument(
        "--no-reference", action="store_true", help="adaptation: no unshaped Chromium viewer"
    )
    p.add_argument("--participants", type=int, help="meeting (6) or audio room (50) size")
    p.add_argument("--speakers", type=int, default=3, help="audio: publishers (default 3)")
    p.add_argument("--packet-size", type=int, default=1200, help="top video packet size")
    p.add_argument("--duration", type=float, default=10.0, help="seconds measured per step")
    p.add_argument(
        "--warmup",
        type=float,
        help=f"seconds before measuring (default {WARMUP_S:g}; {FEEDBACK_WARMUP_S:g} with "
        "transport-wide CC feedback, while the server's estimate ramps up to the top layer)",
    )
    p.add_argument("--rate", type=float, default=1.0, help="frame-rate multiplier (first step)")
    p.add_argument(
        "--rates",
        type=_rates,
        default=(),
        metavar="X,Y,...",
        help="measure one step at each of these rate multipliers (every one, whatever its loss)",
    )
    p.add_argument("--max-steps", type=int, default=8, help="find-max: most steps")
    p.add_argument("--step-factor", type=float, default=1.5, help="find-max: rate growth")
    p.add_argument("--max-time", type=float, default=600.0, help="find-max: most seconds")
    p.add_argument(
        "--srtp-profile",
        default="SRTP_AEAD_AES_128_GCM",
        choices=["SRTP_AEAD_AES_128_GCM", "SRTP_AES128_CM_SHA1_80"],
    )
    p.add_argument("--bind", help="local address of the synthetic endpoints")
    p.add_argument(
        "--transport",
        choices=["udp", "tcp"],
        default="udp",
        help="how subscribers reach the server: udp, or tcp (ICE-TCP); publishers use UDP",
    )
    p.add_argument(
        "--no-feedback",
        action="store_true",
        help="subscribers send no transport-wide CC feedback (receiver reports only)",
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin server and generator")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="our local server's forwarding workers (server.workers; default 1)",
    )
    p.add_argument(
        "--spread",
        type=int,
        default=0,
        help="our local server's server.room_spread_subscribers: with --workers 2 or more, "
        "one room's later subscribers go to another worker past this many (default 0: off)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--sample", type=float, default=10.0, help="soak: seconds per sample")
    p.add_argument("--cycles", type=int, default=1000, help="churn: join/leave cycles")
    p.add_argument("--concurrency", type=int, default=4, help="churn: cycles at once")
    p.add_argument(
        "--settle",
        type=float,
        default=65.0,
        help="churn: seconds after the last leave before the final RSS (default 65)",
    )
    p.add_argument(
        "--in-process",
        action="store_true",
        help="churn: run the server in this process and trace its allocations",
    )
    return p.parse_args(argv)


def _config(args: argparse.Namespace) -> ScenarioConfig:
    bind = args.bind or ("127.0.0.1" if args.target is None else "0.0.0.0")
    return ScenarioConfig(
        scenario="fanout" if args.scenario in LONG_RUNS else args.scenario,
        subscribers=args.subscribers or 50,
        participants=args.participants,
        speakers=args.speakers,
        packet_size=args.packet_size,
        duration_s=args.duration,
        warmup_s=(
            args.warmup
            if args.warmup is not None
            else (WARMUP_S if args.no_feedback else FEEDBACK_WARMUP_S)
        ),
        rate=args.rate,
        find_max=args.find_max,
        max_steps=args.max_steps,
        step_factor=args.step_factor,
        max_total_s=args.max_time,
        srtp_profile=args.srtp_profile,
        bind_host=bind,
        transport=args.transport,
        rooms=args.rooms,
        p99_bound_ms=args.p99_bound_ms,
        feedback=not args.no_feedback,
        rates=args.rates,
    )


def _pin(args: argparse.Namespace) -> int | None:
    """Pick the server's CPU and move this process to another; None when not pinning."""
    if args.no_pin or cpu_count() < 2:
        return None
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[1]})
    return cpus[0]


def _targets(
    args: argparse.Namespace, server_cpu: int | None, extra_config: str = ""
) -> list[Target]:
    ours = SfuTarget(
        url=args.target,
        jwt_secret=args.jwt_secret,
        server_cpu=server_cpu,
        workers=args.workers,
        spread=args.spread,
        extra_config=extra_config,
    )
    targets: list[Target] = [ours]
    if args.vs == "janus":
        try:
            from bench.janus import JanusTarget  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            raise SystemExit(f"--vs janus: Janus support is not available ({exc})") from None
        targets.append(JanusTarget(server_cpu=server_cpu))
    return targets


async def _run_cluster(args: argparse.Namespace) -> list[RunResult]:
    """``--cluster``: the relay arm (publishers on node A, subscribers on node B), then the
    baseline (everything on node A), on one two-node cluster started for the run."""
    from bench.cluster import ClusterArm, LocalCluster

    server_cpu = _pin(args)
    spare = sorted(os.sched_getaffinity(0) - {server_cpu}) if server_cpu is not None else []
    # With a third CPU node B gets its own (the generator keeps the second); on two, both
    # nodes share the server's CPU, as the baseline's one node has it alone.
    cpu_b = spare[1] if len(spare) >= 2 else server_cpu
    cluster = LocalCluster(cpus=(server_cpu, cpu_b))
    bar = ProgressBar(enabled=not args.quiet)
    results: list[RunResult] = []
    try:
        bar(0.0, "starting redis-server and two nodes")
        await cluster.start()
        for arm in (ClusterArm.relay(cluster), ClusterArm.baseline(cluster)):
            try:
                results.append(await run_scenario(arm, _config(args), bar))
            finally:
                await arm.stop()
    except (TargetError, HandshakeError, OSError) as exc:
        bar.finish()
        tails = "\n".join(f"{n}:\n{t.log_tail()}" for n, t in cluster.nodes.items())
        raise SystemExit(f"cluster: {exc}\n{tails}") from None
    finally:
        await cluster.stop()
    bar.finish()
    return results


async def _run(args: argparse.Namespace) -> list[RunResult]:
    if args.cluster:
        return await _run_cluster(args)
    if args.clustered:
        from bench.cluster import clustered_node

        try:
            async with clustered_node(args.workers) as section:
                return await _run_targets(args, section)
        except TargetError as exc:
            raise SystemExit(f"clustered: {exc}") from None
    return await _run_targets(args)


async def _run_targets(args: argparse.Namespace, extra_config: str = "") -> list[RunResult]:
    server_cpu = _pin(args) if (args.target is None or args.vs) else None
    targets = _targets(args, server_cpu, extra_config)
    bar = ProgressBar(enabled=not args.quiet)
    results: list[RunResult] = []
    for target in targets:
        cfg = _config(args)  # a fresh room name per target, the same load
        try:
            await target.start()
            media_host = getattr(target, "media_host", None)
            if isinstance(media_host, str) and args.bind is None:
                cfg.bind_host = media_host  # Janus: media on a non-loopback address
            results.append(await run_scenario(target, cfg, bar))
        except (TargetError, HandshakeError, OSError) as exc:
            bar.finish()
            tail = getattr(target, "log_tail", None)
            detail = f"\n{tail()}" if callable(tail) and target.pid is not None else ""
            raise SystemExit(f"{target.name}: {exc}{detail}") from None
        finally:
            await target.stop()
    bar.finish()
    return results


async def _run_long(args: argparse.Namespace) -> int:
    """``soak`` or ``churn`` against our server (local, or ``--target``)."""
    server_cpu = _pin(args) if args.target is None else None
    target = SfuTarget(
        url=args.target, jwt_secret=args.jwt_secret, server_cpu=server_cpu, workers=args.workers
    )
    bar = ProgressBar(enabled=not args.quiet)
    plot = args.plot or (str(Path(args.json).with_suffix(".png")) if args.json else None)
    try:
        if args.scenario == "churn" and args.in_process:
            traced = await churn_in_process(args.cycles, args.concurrency, bar)
            bar.finish()
            print(json.dumps(traced, indent=2))
            if args.json:
                Path(args.json).write_text(json.dumps(traced, indent=2) + "\n")
            return 0
        await target.start()
        if args.scenario == "soak":
            soak = await run_soak(target, _config(args), args.sample, bar)
            bar.finish()
            print(json.dumps(soak.summary, indent=2))
            if args.json:
                write_soak(args.json, soak)
            if plot:
                plot_soak(plot, soak)
        else:
            churn = await run_churn(target, args.cycles, args.concurrency, bar, args.settle)
            bar.finish()
            summary = {k: v for k, v in asdict(churn).items() if k != "samples"}
            print(json.dumps({**summary, "rss_vs_baseline": churn.rss_vs_baseline}, indent=2))
            if args.json:
                write_churn(args.json, churn)
            if plot:
                plot_churn(plot, churn)
    except (TargetError, HandshakeError, OSError) as exc:
        bar.finish()
        raise SystemExit(f"{target.name}: {exc}") from None
    finally:
        await target.stop()
    return 0


def _adaptation(args: argparse.Namespace) -> int:
    """The ``adaptation`` scenario (its own runner and report)."""
    from bench.adaptation import (
        AdaptationConfig,
        format_adaptation,
        run_adaptation,
        write_adaptation_json,
    )

    if args.vs or args.target or args.find_max:
        print("python -m bench: adaptation runs our server locally only", file=sys.stderr)
        return 2
    try:
        cfg = AdaptationConfig(
            impaired=args.impaired,
            synthetic=10 if args.subscribers is None else args.subscribers,
            reference=not args.no_reference,
            phase_s=args.phase_seconds,
        )
    except ValueError as exc:
        print(f"python -m bench: {exc}", file=sys.stderr)
        return 2
    bar = ProgressBar(enabled=not args.quiet)
    result = asyncio.run(run_adaptation(cfg, bar))
    bar.finish()
    print(format_adaptation(result))
    if args.json:
        write_adaptation_json(args.json, result)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bench; 0 on success."""
    args = parse_args(argv)
    if args.scenario == "adaptation":
        return _adaptation(args)
    if args.cluster and (args.vs or args.target or args.scenario in LONG_RUNS or args.workers > 1):
        print(
            "python -m bench: --cluster starts its own two nodes (one worker each): "
            "not with --vs, --target, --workers or soak/churn",
            file=sys.stderr,
        )
        return 2
    if args.clustered and (args.cluster or args.vs or args.target or args.scenario in LONG_RUNS):
        print(
            "python -m bench: --clustered makes our local server a clustered node: "
            "not with --cluster, --vs, --target or soak/churn",
            file=sys.stderr,
        )
        return 2
    if args.vs and args.transport != "udp":
        print(
            "python -m bench: --transport tcp measures this server only (not --vs)", file=sys.stderr
        )
        return 2
    try:
        _config(args)
        if not 1 <= args.cycles <= 1_000_000 or not 1 <= args.concurrency <= 64:
            raise ValueError("cycles must be in [1, 1000000] and concurrency in [1, 64]")
        if not 1.0 <= args.sample <= 600.0:
            raise ValueError("sample must be in [1, 600] s")
        if not 0.0 <= args.settle <= 600.0:
            raise ValueError("settle must be in [0, 600] s")
    except ValueError as exc:
        print(f"python -m bench: {exc}", file=sys.stderr)
        return 2
    loop = asyncio.new_event_loop()
    if args.scenario in LONG_RUNS:
        long_task = loop.create_task(_run_long(args))
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, long_task.cancel)
        try:
            return loop.run_until_complete(long_task)
        except asyncio.CancelledError:
            print("\ninterrupted", file=sys.stderr)
            return 130
        finally:
            loop.close()
    task = loop.create_task(_run(args))
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        results = loop.run_until_complete(task)
    except asyncio.CancelledError:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        loop.close()
    print(format_table(results, args.find_max))
    extra: dict[str, object] = {}
    if args.cluster:
        from bench.cluster import cluster_comparison, format_cluster

        print(format_cluster(results))
        extra["cluster"] = cluster_comparison(results)
    if args.json:
        write_json(args.json, results, args.find_max, extra)
    plot = args.plot or (str(Path(args.json).with_suffix(".png")) if args.json else None)
    if plot:
        write_plot(plot, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
