"""Engine resilience in process: out-of-memory split-and-retry, one bad item alone, cancellation."""

from __future__ import annotations

import time

import numpy as np

from t2i_core.common.config import Settings
from t2i_core.engine.core import Engine
from t2i_core.common.registry import TINY_SD_ID
from t2i_core.common.schemas import EngineRequest


def req(seed=1, **kw) -> EngineRequest:
    base = dict(model=TINY_SD_ID, prompt="a bridge", steps=2, guidance_scale=0.0, width=64, height=64, seed=seed)
    return EngineRequest(**{**base, **kw})


def test_oom_splits_the_batch_in_halves_and_every_image_is_made(engine):
    faulty = Engine(Settings(fault_oom_above=2), registry=engine.registry)
    out = faulty.run([req(seed=i) for i in range(8)])
    assert all(r.error is None for r in out)
    assert max(r.batch_size for r in out) == 2
    stats = faulty.stats()
    assert stats["oom_retries"] == 1 + 2  # 8 -> 4+4 -> 2+2+2+2
    # the same pixels as without the fault: the split changes nothing about an image
    assert out[5].pixels == engine.run([req(seed=5)])[0].pixels


def test_an_image_that_never_fits_fails_alone_with_503(engine):
    faulty = Engine(Settings(fault_oom_above=0), registry=engine.registry)
    (out,) = faulty.run([req()])
    assert out.error["code"] == "out_of_memory" and "64x64" in out.error["message"]
    assert faulty.run([req()])[0].error["code"] == "out_of_memory"  # and it keeps answering


def test_one_bad_item_inside_the_engine_fails_alone(engine):
    good = engine.run([req(seed=9)])[0].pixels
    edit = dict(mode="edit", strength=0.5, steps=2)
    poisoned = req(seed=2, image=b"\x00" * 10, **edit)  # wrong pixel count: fails inside the pipeline
    out = engine.run([req(seed=1, image=good, **edit), poisoned, req(seed=3, image=good, **edit)])
    assert out[0].error is None and out[2].error is None
    assert out[1].error["code"] == "engine_failure"


def test_expired_and_cancelled_requests_are_not_worked_on(engine):
    before = engine.stats()["images"]
    expired = req(seed=1, request_id="a", deadline=time.time() - 1)
    engine.cancel(["b"])
    cancelled = req(seed=2, request_id="b")
    fine = req(seed=3, request_id="c")
    out = engine.run([expired, cancelled, fine])
    assert out[0].error["code"] == "timeout" and out[1].error["code"] == "client_closed"
    assert out[2].error is None and engine.stats()["images"] == before + 1


def test_a_batch_nobody_waits_for_stops_at_the_next_step(engine):
    """The step callback aborts a batch once every item is cancelled (here: the deadline passes mid-run)."""
    slow = req(seed=4, steps=40, width=256, height=256, deadline=time.time() + 0.3)
    started = time.perf_counter()
    (out,) = engine.run([slow])
    stopped_after = time.perf_counter() - started
    assert out.error["code"] == "timeout"
    full = engine.run([req(seed=4, steps=40, width=256, height=256)])[0]
    assert full.error is None and full.inference_s > stopped_after  # it did not run to the end


def test_fp32_pixels_unchanged_by_split(engine):
    faulty = Engine(Settings(fault_oom_above=1), registry=engine.registry)
    a = faulty.run([req(seed=i) for i in range(3)])
    b = [engine.run([req(seed=i)])[0] for i in range(3)]
    assert all(np.array_equal(np.frombuffer(x.pixels, np.uint8), np.frombuffer(y.pixels, np.uint8)) for x, y in zip(a, b))


def test_the_retry_runs_after_the_failed_calls_frames_are_released(engine, monkeypatch):
    """An out-of-memory retry inside the ``except`` block kept the failed call's frames (and on a GPU
    their activations) alive through the traceback while the halves ran and the cache was freed."""
    import weakref

    import torch

    class Activation:  # stands for a tensor held by a frame of the failed call
        pass

    faulty = Engine(Settings(), registry=engine.registry)
    real = faulty._call_pipeline
    alive_at_retry: list[bool] = []
    failed: list[weakref.ref] = []

    def call_pipeline(items, seeds):
        if failed:
            alive_at_retry.append(failed[-1]() is not None)
        if len(items) > 1:
            activation = Activation()  # a local of the failing frame
            failed.append(weakref.ref(activation))
            raise torch.OutOfMemoryError("injected")
        return real(items, seeds)

    monkeypatch.setattr(faulty, "_call_pipeline", call_pipeline)
    monkeypatch.setattr(faulty.models, "free_cache", lambda **_: alive_at_retry.append(failed[-1]() is not None))
    out = faulty.run([req(seed=i) for i in range(2)])
    assert all(r.error is None for r in out)
    assert alive_at_retry and not any(alive_at_retry), alive_at_retry


def test_one_garbage_collection_per_engine_call_however_many_splits(engine, monkeypatch):
    """Each out-of-memory split emptied the cache with a full garbage collection (0.4 s in a loaded
    engine): 12 images split down to pairs met 7 errors and took 3.6 s instead of 1.2 s."""
    import gc

    faulty = Engine(Settings(fault_oom_above=2), registry=engine.registry)
    collections = []
    monkeypatch.setattr(gc, "collect", lambda *a: collections.append(1) or 0)
    out = faulty.run([req(seed=i) for i in range(12)])
    assert all(r.error is None for r in out) and faulty.stats()["oom_retries"] == 7
    assert len(collections) == 1
    faulty.run([req(seed=i) for i in range(4)])  # the next engine call collects once again
    assert len(collections) == 2
