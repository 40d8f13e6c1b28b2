"""The engine: loads pipelines and runs a list of requests on one device.

``Engine.run`` takes the list that BentoML's adaptive batching hands over, groups it into sub-batches
of compatible settings, gives every image its own ``torch.Generator`` seeded from its own seed (so an
image depends on its request only, not on its batch-mates), and returns one result per request in
the same order. An error is reported on the results it concerns; it is never raised, so one failing
sub-batch cannot fail the rest of the batch.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

from .config import Settings
from .devices import pick_device, pick_dtype
from .errors import EngineFailure, ModelUnavailable, T2IError
from .registry import ModelEntry, Registry
from .schemas import EngineRequest, EngineResult

log = logging.getLogger("t2i.engine")
SEED_RANGE = 2**32  # drawn seeds stay small enough for every JSON client


@dataclass
class LoadedModel:
    entry: ModelEntry
    text2image: Any
    image2image: Any
    load_s: float


class Engine:
    def __init__(self, settings: Settings | None = None, registry: Registry | None = None):
        self.settings = settings or Settings.from_env()
        self.registry = registry or Registry(default=self.settings.model)
        self.device = pick_device(self.settings.device)
        self._models: dict[str, LoadedModel] = {}
        self._load_lock = threading.Lock()
        self._batch_sizes: deque[int] = deque(maxlen=10_000)
        self._counts: Counter[str] = Counter()

    # ---- models -------------------------------------------------------------------------------
    def load(self, model_id: str) -> LoadedModel:
        """The loaded pipelines of ``model_id``, loading them on first use (once, under a lock)."""
        loaded = self._models.get(model_id)
        if loaded is not None:
            return loaded
        with self._load_lock:
            if model_id in self._models:
                return self._models[model_id]
            entry = self.registry.get(model_id)
            path = entry.local_path()
            started = time.perf_counter()
            from diffusers import AutoPipelineForImage2Image, AutoPipelineForText2Image

            dtype = pick_dtype(self.settings.dtype, self.device, entry.cpu_dtype)
            try:
                t2i = AutoPipelineForText2Image.from_pretrained(path, dtype=dtype, local_files_only=True)
            except (OSError, ValueError) as exc:
                raise ModelUnavailable(f"model {model_id!r} could not be loaded from {path}: {exc}", param="model") from exc
            t2i.to(self.device)
            t2i.set_progress_bar_config(disable=True)
            # The edit pipeline reuses the same modules: no second copy of the weights.
            i2i = AutoPipelineForImage2Image.from_pipe(t2i)
            i2i.set_progress_bar_config(disable=True)
            loaded = LoadedModel(entry, t2i, i2i, time.perf_counter() - started)
            self._models[model_id] = loaded
            log.info("loaded %s on %s as %s in %.2fs", model_id, self.device, dtype, loaded.load_s)
            return loaded

    def loaded_ids(self) -> list[str]:
        return list(self._models)

    # ---- running ------------------------------------------------------------------------------
    def run(self, requests: list[EngineRequest]) -> list[EngineResult]:
        """One result per request, in order; errors are reported per result, never raised."""
        results: list[EngineResult | None] = [None] * len(requests)
        groups: dict[tuple[Any, ...], list[int]] = {}
        for index, req in enumerate(requests):
            groups.setdefault(req.batch_key(), []).append(index)
        self._counts["engine_calls"] += 1
        for indices in groups.values():
            items = [requests[i] for i in indices]
            for i, result in zip(indices, self._run_group(items)):
                results[i] = result
        return [r for r in results if r is not None]

    def _run_group(self, items: list[EngineRequest]) -> list[EngineResult]:
        seeds = [r.seed if r.seed is not None else secrets.randbelow(SEED_RANGE) for r in items]
        first = items[0]
        try:
            started = time.perf_counter()
            pixels = self._call_pipeline(items, seeds)
            elapsed = time.perf_counter() - started
        except T2IError as err:
            return [self._failed(r, s, err) for r, s in zip(items, seeds)]
        except Exception as exc:  # noqa: BLE001 - reported to the items, logged with traceback
            log.exception("pipeline failed for a batch of %d (%s)", len(items), first.model)
            err = EngineFailure(f"generation failed: {type(exc).__name__}: {exc}")
            return [self._failed(r, s, err) for r, s in zip(items, seeds)]
        self._batch_sizes.append(len(items))
        self._counts["images"] += len(items)
        return [
            EngineResult(
                model=r.model, seed=s, width=r.width, height=r.height, pixels=p,
                batch_size=len(items), inference_s=elapsed,
            )
            for r, s, p in zip(items, seeds, pixels)
        ]

    def _failed(self, req: EngineRequest, seed: int, err: T2IError) -> EngineResult:
        self._counts["errors"] += 1
        return EngineResult(model=req.model, seed=seed, width=req.width, height=req.height, error=err.to_dict())

    def _call_pipeline(self, items: list[EngineRequest], seeds: list[int]) -> list[bytes]:
        import numpy as np
        import torch

        first = items[0]
        loaded = self.load(first.model)
        # CPU generators: the same seed gives the same starting noise on every device.
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        kwargs: dict[str, Any] = dict(
            prompt=[r.prompt for r in items],
            negative_prompt=[r.negative_prompt for r in items],
            num_inference_steps=first.steps,
            guidance_scale=first.guidance_scale,
            generator=generators,
            output_type="np",
        )
        if first.kind == "edit":
            from .imaging import from_rgb_pixels

            pipe = loaded.image2image
            kwargs["image"] = [from_rgb_pixels(r.image or b"", r.width, r.height) for r in items]
            kwargs["strength"] = first.strength
        else:
            pipe = loaded.text2image
            kwargs["width"], kwargs["height"] = first.width, first.height
        with torch.inference_mode():
            images = pipe(**kwargs).images
        array = (np.asarray(images) * 255.0).round().clip(0, 255).astype(np.uint8)
        return [np.ascontiguousarray(a).tobytes() for a in array]

    # ---- observability ------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        sizes = list(self._batch_sizes)
        return {
            "device": self.device,
            "default_model": self.registry.default_id,
            "loaded_models": self.loaded_ids(),
            "images": self._counts["images"],
            "errors": self._counts["errors"],
            "engine_calls": self._counts["engine_calls"],
            "batches": len(sizes),
            "max_batch_size_seen": max(sizes, default=0),
            "batch_size_histogram": {str(k): v for k, v in sorted(Counter(sizes).items())},
            "recent_batch_sizes": sizes[-64:],
        }
