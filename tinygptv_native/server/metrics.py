"""Prometheus metrics of one server (its own registry, so several apps in one process do not clash)."""
from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/api/chat", "/api/generate", "/api/tags",
             "/api/show", "/api/ps", "/api/version", "/health", "/metrics", "/")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


def endpoint_label(path: str) -> str:
    """A bounded set of label values: the known endpoints, static files, or "other"."""
    if path in ENDPOINTS:
        return path
    if path.startswith("/static/"):
        return "/static"
    return "other"


class Metrics:
    def __init__(self, queue_depth: Callable[[], float], busy: Callable[[], float], in_flight: Callable[[], float]):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("tinygptv_requests", "HTTP requests answered, by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("tinygptv_prompt_tokens", "Prompt positions evaluated (image rows included, cached ones not)",
                                     registry=r)
        self.cached_tokens = Counter("tinygptv_cached_prompt_tokens",
                                     "Prompt positions reused from a sequence's KV cache", registry=r)
        self.completion_tokens = Counter("tinygptv_completion_tokens", "Tokens generated", registry=r)
        self.images = Counter("tinygptv_images", "Images received in requests", registry=r)
        self.rejected = Counter("tinygptv_rejected_requests", "Requests refused before generation, by reason",
                                ["reason"], registry=r)
        self.cancelled = Counter("tinygptv_cancelled_requests",
                                 "Generations stopped early (client gone or shutdown)", ["reason"], registry=r)
        self.latency = Histogram("tinygptv_request_duration_seconds", "Time from request to the end of the response",
                                 ["endpoint"], buckets=_LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("tinygptv_time_to_first_token_seconds", "Time from admission to the first text piece",
                              buckets=_LATENCY_BUCKETS, registry=r)
        Gauge("tinygptv_queue_depth", "Requests waiting for a free sequence", registry=r).set_function(queue_depth)
        Gauge("tinygptv_busy_sequences", "Sequences answering a request now", registry=r).set_function(busy)
        Gauge("tinygptv_requests_in_flight", "Requests admitted and not finished (decoding or queued)",
              registry=r).set_function(in_flight)

    def count_result(self, result, prompt_positions: int) -> None:
        if result is None:
            return
        self.prompt_tokens.inc(max(0, prompt_positions - result.cached_tokens))
        self.cached_tokens.inc(result.cached_tokens)
        self.completion_tokens.inc(result.completion_tokens)

    def exposition(self):
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
