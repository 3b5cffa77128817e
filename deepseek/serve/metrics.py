"""The server's Prometheus metrics (``GET /metrics``), in a registry of their own so that
two servers in one process (tests) do not share counters."""
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]

_LATENCY = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)


class Metrics:
    """Request count and latency per endpoint and status, batch sizes, queue delay and
    depth, workers by state, JIT plans compiled, worker restarts."""

    def __init__(self, max_batch_size=64):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("deepseek_serve_requests", "HTTP requests answered",
                                ["endpoint", "code"], registry=r)
        self.latency = Histogram("deepseek_serve_request_latency_seconds",
                                 "time from request to response", ["endpoint"],
                                 buckets=_LATENCY, registry=r)
        sizes, b = [], 1
        while b < max_batch_size:
            sizes.append(b)
            b *= 2
        sizes.append(max(1, max_batch_size))
        self.batch_size = Histogram("deepseek_serve_batch_size", "rows per batch run by a worker",
                                    buckets=tuple(sizes), registry=r)
        self.queue_delay = Histogram("deepseek_serve_queue_delay_seconds",
                                     "time a request waited in the queue", buckets=_LATENCY,
                                     registry=r)
        self.queue_depth = Gauge("deepseek_serve_queue_depth", "requests waiting for a worker",
                                 registry=r)
        self.workers = Gauge("deepseek_serve_workers", "worker processes by state", ["state"],
                             registry=r)
        self.jit_plans = Counter("deepseek_serve_jit_plans",
                                 "JIT inference plans the workers compiled (one per input "
                                 "shape and slice thread)", registry=r)
        self.restarts = Counter("deepseek_serve_worker_restarts",
                                "workers replaced after dying", registry=r)

    def render(self):
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
