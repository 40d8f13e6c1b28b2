"""Product metrics on /metrics, beside BentoML's own (Prometheus, aggregated across processes).

Created lazily, once per process, with ``bentoml.metrics`` so they join BentoML's registry. What each
is for is in docs/operations.md ("Metrics").
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any

#: seconds: from a few ms (tiny model, image encoding) to minutes (SD3 at 28 steps, a model load)
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


_CREATING = threading.Lock()


def _metrics() -> dict[str, Any]:
    """The metrics, made on first use. Under a lock: ``lru_cache`` alone lets two threads that ask at
    once (a model load on the engine's thread beside a request) both make them, and the second is
    refused by the registry (DuplicateTimeseries), failing what asked."""
    with _CREATING:
        return _make()


@lru_cache(maxsize=None)
def _make() -> dict[str, Any]:
    import bentoml

    return {
        "images": bentoml.metrics.Counter(
            name="t2i_images_total", documentation="Images delivered to clients, by model and route",
            labelnames=["model", "route"]),
        "engine_images": bentoml.metrics.Counter(
            name="t2i_engine_images_total", documentation="Images the engine made, by model and kind (generate, edit)",
            labelnames=["model", "kind"]),
        "batches": bentoml.metrics.Counter(
            name="t2i_engine_calls_total",
            documentation="Engine pipeline calls by kind (generate, edit, inpaint) and control (none, adapters, "
                          "controlnet, adapters+controlnet); with t2i_engine_call_images_total, images per call",
            labelnames=["kind", "control"]),
        "batch_images": bentoml.metrics.Counter(
            name="t2i_engine_call_images_total", documentation="Images made by engine pipeline calls, by kind and control",
            labelnames=["kind", "control"]),
        "batch_items": bentoml.metrics.Histogram(
            name="t2i_engine_batch_images", documentation="Images per engine pipeline call (not HTTP requests)",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)),
        "queue_wait": bentoml.metrics.Histogram(
            name="t2i_queue_wait_seconds",
            documentation="Per image: from the API handing it to the engine until its pipeline call starts",
            buckets=SECONDS_BUCKETS),
        "stage": bentoml.metrics.Histogram(
            name="t2i_stage_seconds",
            documentation="Time per stage: text_encoding, denoising, vae_decoding per engine batch; image_encoding per image",
            labelnames=["stage"], buckets=SECONDS_BUCKETS),
        "compiled_graphs": bentoml.metrics.Counter(
            name="t2i_compiled_graphs_total",
            documentation="Graphs torch.compile compiled (T2I_COMPILE), by phase: startup (the warm-up) or serving "
                          "(a recompile under traffic; 0 when the warm-up covered it)",
            labelnames=["phase"]),
        "model_load": bentoml.metrics.Histogram(
            name="t2i_model_load_seconds", documentation="Time to load a model onto the device",
            labelnames=["model"], buckets=SECONDS_BUCKETS),
        "oom_retries": bentoml.metrics.Counter(
            name="t2i_oom_retries_total", documentation="Engine batches split and retried after running out of memory"),
        "in_flight": bentoml.metrics.Gauge(
            name="t2i_requests_in_flight", documentation="Generation requests being served by the API (the autoscaling signal)",
            multiprocess_mode="livesum"),
        "errors": bentoml.metrics.Counter(
            name="t2i_engine_errors_total", documentation="Images the engine could not make, by error code",
            labelnames=["code"]),
        "speed_images": bentoml.metrics.Counter(
            name="t2i_speed_tier_images_total", documentation="Images the engine made, by model and speed tier",
            labelnames=["model", "speed"]),
        "cache_calls": bentoml.metrics.Counter(
            name="t2i_step_cache_calls_total",
            documentation="Calls of the denoiser modules a speed tier's step cache hooked (transformer blocks or "
                          "attention layers), by model, tier and outcome (computed, or skipped: answered from the cache)",
            labelnames=["model", "speed", "outcome"]),
        "steps_skipped": bentoml.metrics.Counter(
            name="t2i_speed_steps_skipped_total",
            documentation="Denoising steps a speed tier cut from what the requests asked, summed over images, by model and tier",
            labelnames=["model", "speed"]),
        "key_images": bentoml.metrics.Counter(
            name="t2i_key_images_total", documentation="Images delivered, by API key name (usage: billing, caps)",
            labelnames=["key"]),
        "key_pixels": bentoml.metrics.Counter(
            name="t2i_key_pixels_total", documentation="Pixels of the images delivered, by API key name",
            labelnames=["key"]),
        "key_engine_seconds": bentoml.metrics.Counter(
            name="t2i_key_engine_seconds_total",
            documentation="Engine time spent on a key's images (each image its share of its batch's time), by key name",
            labelnames=["key"]),
        "key_requests": bentoml.metrics.Counter(
            name="t2i_key_requests_total", documentation="Requests by API key name and outcome (ok, or the error code)",
            labelnames=["key", "outcome"]),
        "key_limited": bentoml.metrics.Counter(
            name="t2i_key_limited_total",
            documentation="Requests refused (429) by a key's own limit (images_per_minute, max_concurrent), by key name",
            labelnames=["key", "limit"]),
        "webhooks": bentoml.metrics.Counter(
            name="t2i_webhook_deliveries_total",
            documentation="Webhook delivery attempts by key name, event and outcome (delivered, retry, failed)",
            labelnames=["key", "event", "outcome"]),
        "request_errors": bentoml.metrics.Counter(
            name="t2i_request_errors_total", documentation="Requests answered with an error, by route and error code",
            labelnames=["route", "code"]),
    }


def record_batch(model: str, kind: str, size: int, stages: dict[str, float], control: str = "none") -> None:
    m = _metrics()
    m["engine_images"].labels(model=model, kind=kind).inc(size)
    m["batches"].labels(kind=kind, control=control).inc()
    m["batch_images"].labels(kind=kind, control=control).inc(size)
    m["batch_items"].observe(size)
    for stage, seconds in stages.items():
        m["stage"].labels(stage=stage).observe(seconds)


def record_speed(model: str, speed: str, images: int, cache_calls: int, cache_skipped: int, steps_skipped: int) -> None:
    """One engine batch of a speed tier: its images, its step cache's calls (computed and skipped), and
    the steps the tier cut (summed over its images)."""
    m = _metrics()
    m["speed_images"].labels(model=model, speed=speed).inc(images)
    if cache_calls:
        m["cache_calls"].labels(model=model, speed=speed, outcome="computed").inc(cache_calls - cache_skipped)
        m["cache_calls"].labels(model=model, speed=speed, outcome="skipped").inc(cache_skipped)
    if steps_skipped:
        m["steps_skipped"].labels(model=model, speed=speed).inc(steps_skipped)


def record_compiled_graphs(phase: str, graphs: int) -> None:
    """Graphs torch.compile compiled (``T2I_COMPILE``): at ``startup`` (the warm-up) or while ``serving``
    (a recompile under traffic)."""
    _metrics()["compiled_graphs"].labels(phase=phase).inc(graphs)


def record_queue_wait(seconds: float) -> None:
    _metrics()["queue_wait"].observe(max(0.0, seconds))


def record_image_encoding(seconds: float) -> None:
    _metrics()["stage"].labels(stage="image_encoding").observe(seconds)


def record_images(model: str, route: str, count: int) -> None:
    _metrics()["images"].labels(model=model, route=route).inc(count)


def record_model_load(model: str, seconds: float) -> None:
    _metrics()["model_load"].labels(model=model).observe(seconds)


def record_oom_retry() -> None:
    _metrics()["oom_retries"].inc()


def record_error(code: str) -> None:
    _metrics()["errors"].labels(code=code).inc()


def record_request_error(route: str, code: str) -> None:
    _metrics()["request_errors"].labels(route=route, code=code).inc()


def set_in_flight(count: int) -> None:
    _metrics()["in_flight"].set(count)


def record_key_usage(key: str, images: int, pixels: int, engine_seconds: float) -> None:
    m = _metrics()
    m["key_images"].labels(key=key).inc(images)
    m["key_pixels"].labels(key=key).inc(pixels)
    m["key_engine_seconds"].labels(key=key).inc(engine_seconds)


def record_key_request(key: str, outcome: str) -> None:
    _metrics()["key_requests"].labels(key=key, outcome=outcome).inc()


def record_key_limited(key: str, limit: str) -> None:
    _metrics()["key_limited"].labels(key=key, limit=limit).inc()


def record_webhook(key: str, event: str, outcome: str) -> None:
    _metrics()["webhooks"].labels(key=key, event=event, outcome=outcome).inc()
