"""Bench output: a progress bar (stderr), the table (stdout), the JSON file and the PNG plot."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from bench.scenarios import DELIVERY_LIMIT, LOSS_LIMIT, RunResult, StepResult

__all__ = ["ProgressBar", "comparison", "format_table", "write_json", "write_plot"]

_BAR = 30


class ProgressBar:
    """A one-line progress bar on a terminal; on a pipe, a line per 10 % (no dependency)."""

    def __init__(self, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.start = time.monotonic()
        self._last_decile = -1
        self._last_draw = 0.0
        self._width = 0

    def __call__(self, fraction: float, label: str) -> None:
        """Show ``fraction`` (0..1) done with ``label``."""
        if not self.enabled:
            return
        fraction = min(1.0, max(0.0, fraction))
        elapsed = time.monotonic() - self.start
        filled = int(fraction * _BAR)
        bar = "#" * filled + "." * (_BAR - filled)
        line = f"[{bar}] {fraction * 100:5.1f}% {elapsed:6.1f}s {label}"
        if self.tty:
            now = time.monotonic()
            if now - self._last_draw < 0.1 and fraction < 1.0:
                return
            self._last_draw = now
            pad = max(0, self._width - len(line))
            self.stream.write("\r" + line + " " * pad)
            self._width = len(line)
            self.stream.flush()
            return
        decile = int(fraction * 10)
        if decile != self._last_decile:
            self._last_decile = decile
            self.stream.write(line + "\n")
            self.stream.flush()

    def finish(self) -> None:
        """End the bar's line (terminal)."""
        if self.enabled and self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _step_row(result: RunResult, step: StepResult) -> list[str]:
    return [
        result.target,
        f"x{step.rate:g}",
        _fmt(step.sent_pps, 0),
        _fmt(step.egress_pps, 0),
        f"{step.loss * 100:.3f}%",
        _fmt(step.latency_p50_ms, 2),
        _fmt(step.latency_p99_ms, 2),
        _fmt(step.latency_p999_ms, 2),
        _fmt(step.server_cpu_util, 2),
        _fmt(step.server_cpu_s_per_million_packets, 2),
        _fmt(step.generator_cpu_util, 2),
        f"{step.delivery * 100:.0f}%",
    ]


_HEADERS = [
    "target",
    "load",
    "sent pps",
    "egress pps",
    "loss",
    "p50 ms",
    "p99 ms",
    "p99.9 ms",
    "srv cpu",
    "cpu s/Mpkt",
    "gen cpu",
    "delivery",
]


def _grid(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def format_table(results: Sequence[RunResult], find_max: bool) -> str:
    """The human-readable report: setup, every step, the headline and ratios."""
    out: list[str] = []
    for r in results:
        out.append(
            f"{r.target}: {r.scenario} ({r.load}; {r.publishers} publishers, {r.subscriptions} "
            f"subscriptions), connected in {r.setup_s:.1f}s, {r.srtp_profile}, "
            f"generator {r.implementation}"
        )
    rows = [_step_row(r, s) for r in results for s in r.steps]
    out.append(_grid(_HEADERS, rows))
    for r in results:
        for s in r.steps:
            for port, g in s.by_server_port.items():
                out.append(
                    f"{r.target} x{s.rate:g}: subscribers on server port {port}: "
                    f"{_fmt(g['subscribers'], 0)}, loss {g['loss']}, "
                    f"p50 {g['latency_p50_ms']} ms, p99 {g['latency_p99_ms']} ms"
                )
            for node, c in s.server_cpu_by_node.items():
                out.append(
                    f"{r.target} x{s.rate:g}: {node} CPU {_fmt(c['cpu_util'], 3)} of a core, "
                    f"{_fmt(c['cpu_s_per_million_packets'], 2)} s per million egress packets"
                )
            for node, rates in s.link.items():
                out.append(
                    f"{r.target} x{s.rate:g}: {node} link and data plane, datagrams/s: "
                    + ", ".join(f"{k[:-4]} {_fmt(v, 0)}" for k, v in rates.items())
                )
            for worker, f in s.server_forwarding_ms.items():
                out.append(
                    f"{r.target} x{s.rate:g}: server forwarding latency, worker {worker}: "
                    f"p50 <= {f['p50_ms']} ms, p99 <= {f['p99_ms']} ms "
                    f"({_fmt(f['samples'], 0)} samples)"
                )
    if find_max:
        for r in results:
            best = r.best()
            figure = _fmt(best.egress_pps, 0) if best else "none within the limits"
            bound = "" if r.p99_bound_ms is None else f", p99 <= {r.p99_bound_ms:g} ms"
            out.append(
                f"{r.target}: max sustained egress {figure} pps (loss <= {LOSS_LIMIT * 100:g}%, "
                f"delivery >= {DELIVERY_LIMIT * 100:g}%{bound}; stopped by {r.stopped_by})"
            )
    for r in results:
        late = sum(s.late_frames for s in r.steps)
        errors = sum(s.srtp_errors + s.send_errors for s in r.steps)
        saturated = [s for s in r.steps if (s.generator_cpu_util or 0) > 0.9]
        if late or errors or saturated:
            out.append(
                f"warning ({r.target}): generator late frames {late}, send/SRTP errors {errors}"
                + (
                    ", generator CPU above 90% in some steps: its figures are a floor"
                    if saturated
                    else ""
                )
            )
    ratio = comparison(results, find_max)
    if ratio:
        out.append(
            f"ratios ({results[0].target} / {results[1].target}): "
            + ", ".join(f"{k} {_fmt(v, 3)}" for k, v in ratio.items())
        )
    return "\n".join(out)


def _headline(result: RunResult, find_max: bool) -> StepResult | None:
    return result.best() if find_max else (result.steps[-1] if result.steps else None)


def comparison(results: Sequence[RunResult], find_max: bool) -> dict[str, float | None]:
    """First target over second: CPU-seconds per million egress packets and egress pps."""
    if len(results) < 2:
        return {}
    a, b = _headline(results[0], find_max), _headline(results[1], find_max)

    def ratio(x: float | None, y: float | None) -> float | None:
        return round(x / y, 4) if x is not None and y else None

    key = "max_egress_pps" if find_max else "egress_pps"
    return {
        "server_cpu_s_per_million_packets": ratio(
            a.server_cpu_s_per_million_packets if a else None,
            b.server_cpu_s_per_million_packets if b else None,
        ),
        key: ratio(a.egress_pps if a else None, b.egress_pps if b else None),
    }


def write_json(
    path: str | os.PathLike[str],
    results: Sequence[RunResult],
    find_max: bool,
    extra: dict[str, Any] | None = None,
) -> None:
    """One object per target under ``targets`` (and ``ratios`` when there are two), and
    ``extra``'s keys (``cluster``: the relay arm against the baseline, step by step)."""
    doc: dict[str, Any] = {
        "targets": [r.as_dict(find_max) for r in results],
        "loss_limit": LOSS_LIMIT,
        "delivery_limit": DELIVERY_LIMIT,
    }
    if len(results) >= 2:
        doc["ratios"] = comparison(results, find_max)
    doc.update(extra or {})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(doc, indent=2) + "\n")


def write_plot(path: str | os.PathLike[str], results: Sequence[RunResult]) -> None:
    """Egress pps, server CPU and latency against the load multiplier, one line per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for k, r in enumerate(results):
        color = f"C{k}"  # one colour per target in every panel
        x = [s.rate for s in r.steps]
        axes[0].plot(x, [s.egress_pps for s in r.steps], marker="o", color=color, label=r.target)
        axes[1].plot(
            x,
            [s.server_cpu_util if s.server_cpu_util is not None else float("nan") for s in r.steps],
            marker="o",
            color=color,
            label=r.target,
        )
        for q, style in (("latency_p50_ms", "-"), ("latency_p99_ms", "--")):
            values = [getattr(s, q) if getattr(s, q) is not None else float("nan") for s in r.steps]
            axes[2].plot(x, values, style, marker="o", color=color, label=f"{r.target} {q[8:11]}")
    titles = ("egress packets/s", "server CPU (cores)", "one-way latency (ms)")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title)
        ax.set_xlabel("load (rate multiplier)")
        ax.grid(True, alpha=0.3)
        ax.legend()
    scenario = results[0].scenario if results else ""
    fig.suptitle(f"python -m bench {scenario}")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
