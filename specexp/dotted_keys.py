"""Reading nested metrics.json / config dicts by dotted key ("speedup.ci_low")."""
from __future__ import annotations

from typing import Any


def value_at(d: Any, dotted: str, default: Any = None) -> Any:
    """d["a"]["b"] for "a.b" (keys may contain '@', e.g. quality.pass@1); default when absent."""
    cur = d
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return default
        cur = cur[part]
    return cur
