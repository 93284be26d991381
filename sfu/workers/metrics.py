"""One ``/metrics`` for the whole server: every worker's series with a ``worker`` label.

The supervisor scrapes each worker's own registry over loopback at scrape time, adds
``worker="<index>"`` to every sample (an index, so the label stays bounded by
``server.workers``) and serves them together with its own series about the workers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

__all__ = ["WORKER_LABEL", "MergedMetrics", "relabel"]

#: The label that tells workers' series apart.
WORKER_LABEL = "worker"


def relabel(text: str, worker: int) -> list[Metric]:
    """The families of one worker's exposition ``text`` with ``worker`` on every sample."""
    out: list[Metric] = []
    label = str(worker)
    for family in text_string_to_metric_families(text):
        family.samples = [
            Sample(s.name, {**s.labels, WORKER_LABEL: label}, s.value, s.timestamp, s.exemplar)
            for s in family.samples
        ]
        out.append(family)
    return out


class MergedMetrics:
    """A collector over families from several sources: same-named families are merged
    (each worker's samples carry their own ``worker`` label, so none collide)."""

    def __init__(self, groups: Iterable[Sequence[Metric]]) -> None:
        merged: dict[str, Metric] = {}
        for group in groups:
            for family in group:
                into = merged.get(family.name)
                if into is None:
                    merged[family.name] = family
                elif into.type == family.type:
                    into.samples.extend(family.samples)
        self._families = list(merged.values())

    def collect(self) -> Iterator[Metric]:
        """The merged families (the encoders of prometheus_client call this)."""
        return iter(self._families)
