"""The engine's counters and latency histograms, as plain Python (no Prometheus dependency):
histograms keep cumulative bucket counts, Prometheus' layout (le, count), so an exporter copies
them as they are."""
import bisect
import math

# seconds: from a tiny model's sub-millisecond steps to a long queue wait
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0, 30.0, math.inf)


class Histogram:
    """Observations counted in buckets with upper bounds `buckets` (ascending, the last
    math.inf). snapshot() -> {"buckets": [(le, cumulative count), ...], "sum": float,
    "count": int}. Not locked: the engine observes under its own lock."""

    def __init__(self, buckets=LATENCY_BUCKETS):
        self.bounds = tuple(buckets)
        self.counts = [0] * len(self.bounds)
        self.sum, self.count = 0.0, 0

    def observe(self, value):
        """Count one observation (a float, seconds)."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def snapshot(self):
        """The cumulative bucket counts, the sum and the count (a new dict)."""
        total, out = 0, []
        for le, c in zip(self.bounds, self.counts):
            total += c
            out.append((le, total))
        return {"buckets": out, "sum": self.sum, "count": self.count}
