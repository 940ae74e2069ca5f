"""The original's per-component counters (reference 6), published to `stats:<component>`.

Counters only grow, gauges track a current value and its high-water mark (`max<Name>`).
The JSON is flat, integer-valued and key-sorted, as the original's dashboard expects.
Counts that have a Prometheus metric feed it from here, so the two never disagree.
"""

from __future__ import annotations

import json
import threading

from downloader.observability import metrics


class Stats:
    def __init__(self, component: str = "") -> None:
        """`component`: processor or notifier, as in `stats:<component>`."""
        self.component = component
        self._lock = threading.Lock()
        self._values: dict[str, int] = {"alive": 1}

    def incr(self, name: str, by: int = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + by
        metrics.stat_incremented(self.component, name, by)

    def gauge_add(self, name: str, by: int, high_water: str | None = None) -> None:
        """Move gauge `name` by `by`, raising its high-water mark `high_water` if passed."""
        with self._lock:
            value = self._values.get(name, 0) + by
            self._values[name] = value
            if high_water is not None and value > self._values.get(high_water, 0):
                self._values[high_water] = value
        metrics.stat_gauge_moved(name, by)

    def get(self, name: str) -> int:
        with self._lock:
            return self._values.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)

    def to_json(self) -> str:
        return json.dumps(self.snapshot(), sort_keys=True, separators=(", ", ": "))
