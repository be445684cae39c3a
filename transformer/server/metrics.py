"""GET /metrics: Prometheus' text format (prometheus_client) of the engine's counters
(Engine.metrics(): queue, running requests and rows, KV pool, tokens, time-to-first-token and
inter-token histograms), the generated tokens per second over the last 10 s, and the server's
own request latency histogram per route."""
import time
from collections import deque

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PREFIX = "transformer_"
GAUGES = {"queue_length": "generation requests waiting for admission",
          "embed_queue_length": "embedding requests waiting for a batch",
          "running_requests": "generation requests running",
          "running_rows": "rows (sequences x beams) of the running requests",
          "kv_reserved_tokens": "KV pool tokens reserved by running requests",
          "kv_budget_tokens": "KV pool size in tokens"}
COUNTERS = {"tokens_generated": "tokens generated (rows of logits computed)",
            "requests_finished": "requests that ended with a result",
            "requests_cancelled": "requests cancelled (client gone, shutdown)",
            "requests_failed": "requests that ended with an error",
            "requests_refused": "requests refused with a full queue (429)",
            "embed_batches": "embedding batches run", "embed_requests": "embedding requests run",
            "steps": "batched decode steps"}
HISTOGRAMS = {"time_to_first_token_seconds": "submit to the first token's logits",
              "inter_token_latency_seconds": "between two tokens of a request"}
WINDOW = 10.0  # seconds of the tokens-per-second gauge


class EngineCollector:
    """A prometheus_client collector reading engine.metrics() at each scrape."""

    def __init__(self, engine):
        self.engine = engine
        self.samples = deque()  # (monotonic time, tokens_generated), the last WINDOW seconds

    def tokens_per_second(self, tokens):
        now = time.monotonic()
        self.samples.append((now, tokens))
        while len(self.samples) > 2 and now - self.samples[1][0] > WINDOW:
            self.samples.popleft()
        t0, n0 = self.samples[0]
        return (tokens - n0) / (now - t0) if now > t0 else 0.0

    def collect(self):
        m = self.engine.metrics()
        for name, doc in GAUGES.items():
            yield GaugeMetricFamily(PREFIX + name, doc, value=m[name])
        budget = m["kv_budget_tokens"]
        yield GaugeMetricFamily(PREFIX + "kv_usage_ratio", "share of the KV pool reserved",
                                value=m["kv_reserved_tokens"] / budget if budget else 0.0)
        yield GaugeMetricFamily(PREFIX + "tokens_per_second",
                                f"tokens generated per second over the last {WINDOW:g} s "
                                f"(between scrapes)",
                                value=self.tokens_per_second(m["tokens_generated"]))
        for name, doc in COUNTERS.items():
            yield CounterMetricFamily(PREFIX + name, doc, value=m[name])
        for name, doc in HISTOGRAMS.items():
            h = m[name]
            yield HistogramMetricFamily(
                PREFIX + name, doc, sum_value=h["sum"],
                buckets=[("+Inf" if le == float("inf") else repr(float(le)), c)
                         for le, c in h["buckets"]])


class Metrics:
    """The registry of one app: the engine's collector and the request latency histogram
    (route, status). render() -> (bytes, content type)."""

    def __init__(self, engine):
        self.registry = CollectorRegistry()
        self.registry.register(EngineCollector(engine))
        self.latency = Histogram(PREFIX + "request_duration_seconds",
                                 "HTTP request latency, first byte in to last byte out",
                                 ("route", "status"), registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                          0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0))

    def render(self):
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
