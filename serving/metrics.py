"""The service's own Prometheus metrics, through ``ray.util.metrics`` (so every replica's values reach
the node's metrics endpoint, aggregated: a plain ``prometheus_client`` metric would stay inside its
replica process). Exported names get Ray's ``ray_`` prefix, e.g. ``ray_regionmir_serve_latency_seconds``.

Labels are closed sets only: ``stage`` (:data:`STAGES`), ``anatomy`` (the 36 vocabulary names,
``"none"`` or ``"unknown"``), ``reason`` (:data:`serving.errors.REASONS` or ``"other"``), ``source``
(``user``/``atlas``), ``endpoint`` (route templates, never raw paths). Never an image, patient or
study id.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from regionmir.anatomy import ANATOMY_NAMES

from .errors import reason_label

log = logging.getLogger("regionmir.serving")

PREFIX = "regionmir_serve_"
STAGES: tuple[str, ...] = ("fetch", "decode", "crop", "localize", "encode", "search", "export", "total")
LATENCY_BOUNDARIES_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]


def anatomy_label(name: str | None) -> str:
    if not name:
        return "none"
    return name if name in ANATOMY_NAMES else "unknown"


class _Noop:
    def inc(self, *a: Any, **k: Any) -> None: ...

    def observe(self, *a: Any, **k: Any) -> None: ...

    def set(self, *a: Any, **k: Any) -> None: ...


class ServiceMetrics:
    """The metrics one process records. Created lazily, once per process (:func:`get_metrics`)."""

    def __init__(self) -> None:
        try:
            import ray
            from ray.util.metrics import Counter, Gauge, Histogram

            if not ray.is_initialized():
                raise RuntimeError("Ray is not initialised in this process")
        except Exception as exc:  # outside Ray (unit tests, a local backend): record nothing
            log.debug("metrics disabled: %s", exc)
            self.latency = self.queries = self.errors = self.batch_size = self.batch_crops = _Noop()
            self.index_rows = self.requests = self.localized = _Noop()
            return
        self.latency = Histogram(
            PREFIX + "latency_seconds",
            "Query latency per stage (seconds)",
            boundaries=LATENCY_BOUNDARIES_S,
            tag_keys=("stage",),
        )
        self.requests = Counter(
            PREFIX + "requests_total",
            "HTTP requests by route template and status class",
            tag_keys=("endpoint", "status"),
        )
        self.queries = Counter(
            PREFIX + "queries_total",
            "Search queries by query anatomy and how the box was found",
            tag_keys=("anatomy", "source"),
        )
        self.errors = Counter(PREFIX + "errors_total", "Answered errors by reason", tag_keys=("reason",))
        self.batch_size = Histogram(
            PREFIX + "encoder_batch_requests", "Requests merged into one encoder batch", boundaries=BATCH_BOUNDARIES
        )
        self.batch_crops = Histogram(
            PREFIX + "encoder_batch_crops", "Crops in one encoder forward pass", boundaries=BATCH_BOUNDARIES
        )
        self.index_rows = Gauge(
            PREFIX + "index_rows", "Rows in the searched collection (and of the served model)", tag_keys=("scope",)
        )
        self.localized = Histogram(
            PREFIX + "localization_confidence",
            "Classifier confidence of atlas-found boxes",
            boundaries=[0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.99],
        )

    def observe_stage(self, stage: str, seconds: float) -> None:
        if stage in STAGES:
            self.latency.observe(max(0.0, seconds), tags={"stage": stage})

    def error(self, reason: str) -> None:
        self.errors.inc(1, tags={"reason": reason_label(reason)})


_lock = threading.Lock()
_metrics: ServiceMetrics | None = None


def get_metrics() -> ServiceMetrics:
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = ServiceMetrics()
        return _metrics
