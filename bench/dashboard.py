"""Render the Grafana dashboard's panels from a Prometheus server into one PNG, no Grafana.

    python -m bench.dashboard --prometheus http://127.0.0.1:9090 --range 15m --out dash.png

Every panel of ``configs/grafana/sfu-overview.json`` is queried through the Prometheus HTTP
API (``query_range``) with the dashboard's variables filled in, and drawn where its grid
position puts it: a quick look at a bench run or a deployment, and the picture in the README.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "configs" / "grafana" / "sfu-overview.json"
_RANGE_RE = re.compile(r"^(\d+)([smh])$")
_UNIT_SCALE = {"s": 1, "m": 60, "h": 3600}


def parse_range(text: str) -> int:
    """``15m`` -> 900 seconds."""
    match = _RANGE_RE.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"bad range {text!r}: use e.g. 90s, 15m or 2h")
    return int(match.group(1)) * _UNIT_SCALE[match.group(2)]


def fill_variables(expr: str, range_s: int, step_s: int) -> str:
    """What Grafana substitutes: the rate interval (4 scrapes at least), range and instance."""
    rate = f"{max(4 * step_s, 15)}s"
    return (
        expr.replace("$__rate_interval", rate)
        .replace("$__range", f"{range_s}s")
        .replace("$instance", ".*")
    )


def query_range(base: str, expr: str, start: float, end: float, step: int) -> list[Any]:
    """The ``result`` of one range query (raises on an API error)."""
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{base}/api/v1/query_range?{params}", timeout=30) as resp:
        body = json.load(resp)
    if body.get("status") != "success":
        raise RuntimeError(f"query failed: {expr}: {body}")
    return list(body["data"]["result"])


def legend(template: str, labels: dict[str, str]) -> str:
    """Grafana's ``{{label}}`` legend format."""
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)


def render(
    base: str,
    range_s: int,
    out: Path,
    dashboard_path: Path = DASHBOARD,
    end: float | None = None,
) -> int:
    """Draw every panel over ``range_s`` seconds up to ``end`` (default now); returns how many
    panels had data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dashboard = json.loads(dashboard_path.read_text("utf-8"))
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    end = time.time() if end is None else end
    start = end - range_s
    step = max(1, range_s // 240)
    fig = plt.figure(figsize=(24, rows * 0.62), dpi=80)
    grid = fig.add_gridspec(rows, 24, hspace=1.6, wspace=0.9, top=0.985, bottom=0.01)
    with_data = 0
    for panel in panels:
        pos = panel["gridPos"]
        ax = fig.add_subplot(grid[pos["y"] : pos["y"] + pos["h"], pos["x"] : pos["x"] + pos["w"]])
        ax.set_title(panel["title"], fontsize=10, loc="left")
        series = []
        for target in panel["targets"]:
            expr = fill_variables(target["expr"], range_s, step)
            for result in query_range(base, expr, start, end, step):
                points = [(float(t), float(v)) for t, v in result["values"]]
                series.append((legend(target.get("legendFormat", ""), result["metric"]), points))
        if series:
            with_data += 1
        if panel["type"] == "stat":
            last = [p[-1][1] for _, p in series if p and not math.isnan(p[-1][1])]
            text = f"{sum(last):.4g}" if last else "-"
            if panel["fieldConfig"]["defaults"].get("unit") == "bool_yes_no" and last:
                text = "yes" if min(last) >= 1 else "no"
            ax.text(0.5, 0.45, text, fontsize=22, ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        for name, points in series:
            xs = [(t - end) / 60 for t, _ in points]
            ax.plot(xs, [v for _, v in points], label=name or None, linewidth=1.2)
        ax.set_xlim(-range_s / 60, 0)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("minutes ago", fontsize=7)
        unit = panel["fieldConfig"]["defaults"].get("unit", "")
        if unit and unit != "short":
            ax.set_ylabel(unit, fontsize=7)
        if any(name for name, _ in series):
            ax.legend(fontsize=6, loc="upper left", ncol=2)
    fig.suptitle(dashboard["title"], fontsize=14, x=0.01, ha="left")
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return with_data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard", description=__doc__)
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090", help="Prometheus URL")
    parser.add_argument("--range", type=parse_range, default=900, help="time range (15m)")
    parser.add_argument("--out", type=Path, default=Path("sfu-dashboard.png"))
    parser.add_argument("--dashboard", type=Path, default=DASHBOARD)
    parser.add_argument("--end", type=float, default=None, help="end, unix seconds (now)")
    args = parser.parse_args(argv)
    n = render(args.prometheus.rstrip("/"), args.range, args.out, args.dashboard, args.end)
    print(f"wrote {args.out} ({n} panels with data)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
