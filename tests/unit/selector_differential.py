"""What the differential tests of the layer selectors (simulcast and SVC, compiled against
the reference) compare: every public property and counter, and each call's outcome."""

from __future__ import annotations

from typing import Any

from sfu._fastpath.values import LayerPair


def state(sel: Any) -> dict[str, Any]:
    """Every public property and counter of a selector."""
    return {
        "num_spatial": sel.num_spatial,
        "current": tuple(sel.current),
        "target": tuple(sel.target),
        "requested": tuple(sel.requested),
        "available": sel.available,
        "switch_pending": sel.switch_pending,
        "switches": sel.switches,
        "temporal_switches": sel.temporal_switches,
        "keyframe_requests": sel.keyframe_requests,
        "last_switch_at": sel.last_switch_at,
    }


def call(obj: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, Any]:
    """Call a method; its outcome as ("ok", (type, value)) or ("raise", (type, message))."""
    try:
        result = getattr(obj, name)(*args, **kwargs)
    except Exception as exc:  # any exception must match the reference's
        return "raise", (type(exc), str(exc))
    if isinstance(result, LayerPair):
        return "ok", (type(result), tuple(result))
    return "ok", (type(result), result)


def construct(cls: Any, num: int, interval: float) -> tuple[str, Any]:
    """A selector, or the exception its constructor raised."""
    try:
        return "ok", cls(num, keyframe_request_interval=interval)
    except Exception as exc:
        return "raise", (type(exc), str(exc))
