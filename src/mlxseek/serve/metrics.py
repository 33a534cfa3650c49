"""Prometheus metrics of one app (its own registry, so two apps in one process never share counters)."""

from __future__ import annotations

from typing import Callable, Optional

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# TTFT spans a cached short prompt on a small model (ms) to a cold 100K-token prefill on V3 (minutes)
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class _EngineStats:
    """Exports every number in engine.stats() as a gauge mlxseek_engine_<key>."""

    def __init__(self, stats: Callable[[], dict]):
        self.stats = stats

    def collect(self):
        try:
            stats = self.stats() or {}
        except Exception:  # noqa: BLE001 - a failing stats() must not break /metrics
            stats = {}
        for key, value in stats.items():
            if isinstance(value, (int, float)):
                name = "mlxseek_engine_" + "".join(c if c.isalnum() else "_" for c in str(key))
                g = GaugeMetricFamily(name, f"engine.stats()['{key}']")
                g.add_metric([], float(value))
                yield g
        if "model_family" in stats:
            g = GaugeMetricFamily("mlxseek_prefix_cache_hit_tokens", "Prompt tokens served from the prefix cache, "
                                  "by model family and snapshot kind (block: cut to a block; exact: a snapshot point)",
                                  labels=["family", "kind"])
            for kind in ("block", "exact"):
                g.add_metric([str(stats["model_family"]), kind], float(stats.get(f"hit_tokens_{kind}", 0)))
            yield g


class Metrics:
    def __init__(self, *, queue_depth: Optional[Callable[[], int]] = None,
                 engine_stats: Optional[Callable[[], dict]] = None):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("mlxseek_requests", "HTTP requests answered", ["endpoint", "status"], registry=r)
        self.tokens = Counter("mlxseek_tokens", "Tokens processed", ["kind"], registry=r)
        self.ttft = Histogram("mlxseek_time_to_first_token_seconds",
                              "Generation submitted (request parsed and rendered) to first token",
                              ["endpoint"], buckets=_TTFT_BUCKETS, registry=r)
        self.cache = Counter("mlxseek_prefix_cache_requests", "Generations by prefix-cache outcome", ["outcome"],
                             registry=r)
        self.queue = Gauge("mlxseek_queue_depth", "Requests waiting for the model", registry=r)
        if queue_depth is not None:
            self.queue.set_function(queue_depth)
        if engine_stats is not None:
            r.register(_EngineStats(engine_stats))

    def finished(self, *, prompt: int, cached: int, generated: int) -> None:
        self.tokens.labels("prompt").inc(prompt)
        self.tokens.labels("cached").inc(cached)
        self.tokens.labels("generated").inc(generated)
        self.cache.labels("hit" if cached > 0 else "miss").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
