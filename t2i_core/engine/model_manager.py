"""Which models are in memory: load on first use (once, however many ask), an LRU memory budget,
and pins that keep a model with requests in flight from being unloaded under them.

States reported per model: ``loaded``, ``loading``, ``available`` (weights on disk) and
``unavailable`` (with the reason, e.g. weights not downloaded and the command that gets them).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from t2i_core.common import metrics
from t2i_core.common.errors import ModelBusy, ModelUnavailable, T2IError
from t2i_core.common.registry import ModelEntry, Registry
from t2i_core.engine.prompt_dedupe import dedupe_text_encoders
from t2i_core.engine.speedups import Speedups, apply as apply_speedups

log = logging.getLogger("t2i.models")
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


@dataclass
class LoadedModel:
    entry: ModelEntry
    text2image: Any
    image2image: Any
    load_s: float
    bytes: int
    last_used: float = field(default_factory=time.monotonic)
    in_flight: int = 0
    _variants: dict[tuple[str, str | None], Any] = field(default_factory=dict)

    def pipeline(self, kind: str, scheduler: str | None) -> Any:
        """The pipeline for ``kind`` with ``scheduler`` (a shallow copy sharing every weight)."""
        base = self.text2image if kind == "generate" else self.image2image
        if scheduler is None:
            return base
        key = (kind, scheduler)
        if key not in self._variants:
            from t2i_core.common.schedulers import build_scheduler

            self._variants[key] = with_scheduler(base, build_scheduler(scheduler, base.scheduler.config))
        return self._variants[key]


def with_scheduler(pipe: Any, scheduler: Any) -> Any:
    """A pipeline of the same class over the same module objects, with another scheduler.

    Built directly rather than with ``Pipeline.from_pipe``, which casts every shared module to its
    ``dtype`` argument (float32 by default): that would silently change the model under the other
    pipelines (and undo the modules a model keeps in float32).
    """
    import inspect

    params = inspect.signature(type(pipe).__init__).parameters
    kwargs = {k: v for k, v in pipe.components.items() if k in params}
    kwargs.update({k: v for k, v in pipe.config.items() if k in params and k not in kwargs and not k.startswith("_")})
    kwargs["scheduler"] = scheduler
    variant = type(pipe)(**kwargs)
    variant.set_progress_bar_config(disable=True)
    return variant


def module_bytes(pipe: Any) -> int:
    """Bytes of every parameter and buffer of the pipeline's torch modules."""
    import torch

    total = 0
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            total += sum(t.numel() * t.element_size() for t in component.parameters())
            total += sum(t.numel() * t.element_size() for t in component.buffers())
    return total


def estimate_bytes(folder: Path, dtype_size: int) -> int:
    """Memory a diffusers folder will take once loaded: its weight files, scaled to the dtype.

    Per component folder, the full-precision files are counted (the ``.fp16.`` variants only when
    nothing else is there), assuming they are stored as float32.
    """
    total = 0
    for component in (p for p in folder.iterdir() if p.is_dir()):
        files = [f for f in component.iterdir() if f.name.endswith(_WEIGHT_SUFFIXES)]
        safetensors = [f for f in files if f.name.endswith(".safetensors")] or files
        full = [f for f in safetensors if ".fp16." not in f.name]
        chosen, stored_size = (full, 4) if full else (safetensors, 2)
        total += sum(f.stat().st_size for f in chosen) * dtype_size // stored_size
    return total


class ModelManager:
    def __init__(self, registry: Registry, device: str, dtype_preference: str, budget_bytes: int,
                 load_timeout_s: float, speedups: Speedups | None = None):
        self.registry = registry
        self.speedups = speedups or Speedups()
        self.device = device
        self.dtype_preference = dtype_preference
        self.budget_bytes = budget_bytes
        self.load_timeout_s = load_timeout_s
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()  # least recently used first
        self._loading: set[str] = set()
        self._failures: dict[str, str] = {}
        self._cond = threading.Condition()
        self.evicted: list[str] = []  # in order, for stats and tests
        self.loads = 0

    # ---- use -----------------------------------------------------------------------------------
    @contextmanager
    def use(self, model_id: str) -> Iterator[LoadedModel]:
        """The loaded model, pinned (never unloaded) for the duration of the block."""
        model = self.load(model_id, pin=True)
        try:
            yield model
        finally:
            with self._cond:
                model.in_flight -= 1
                model.last_used = time.monotonic()
                self._cond.notify_all()

    def load(self, model_id: str, *, pin: bool = False) -> LoadedModel:
        """Load ``model_id`` unless loaded; a concurrent caller waits for the same load."""
        entry = self.registry.get(model_id)
        deadline = time.monotonic() + self.load_timeout_s
        with self._cond:
            while model_id in self._loading:
                if not self._cond.wait(timeout=max(0.0, deadline - time.monotonic())):
                    raise ModelUnavailable(
                        f"model {model_id!r} is still loading after {self.load_timeout_s:g}s; try again", param="model"
                    )
            if model_id in self._loaded:
                model = self._loaded[model_id]
                self._loaded.move_to_end(model_id)
                model.in_flight += pin
                return model
            self._loading.add(model_id)
        try:
            model = self._load(entry)
        except BaseException as exc:
            with self._cond:
                self._loading.discard(model_id)
                self._failures[model_id] = str(exc)
                self._cond.notify_all()
            if isinstance(exc, T2IError):
                raise
            raise ModelUnavailable(f"model {model_id!r} failed to load: {type(exc).__name__}: {exc}", param="model") from exc
        with self._cond:
            self._loading.discard(model_id)
            self._failures.pop(model_id, None)
            self._loaded[model_id] = model
            model.in_flight += pin
            self.loads += 1
            self._cond.notify_all()
        self._make_room(0)  # the measured size may exceed the estimate
        return model

    def _load(self, entry: ModelEntry) -> LoadedModel:
        from diffusers import AutoPipelineForImage2Image, AutoPipelineForText2Image

        from t2i_core.engine.devices import pick_dtype

        path = entry.local_path()
        if entry.source_kind == "hub" and path == entry.source_ref:  # from the HF cache, not a store copy
            from huggingface_hub import snapshot_download

            path = snapshot_download(path, local_files_only=True)
        dtype = pick_dtype(self.dtype_preference, self.device, entry.cpu_dtype)
        estimate = estimate_bytes(Path(path), dtype.itemsize)
        if self.budget_bytes and estimate > self.budget_bytes:
            raise ModelUnavailable(
                f"model {entry.id!r} needs about {estimate} bytes, more than the memory budget "
                f"T2I_MEMORY_BUDGET_BYTES={self.budget_bytes}", param="model",
            )
        self._make_room(estimate, exclude=entry.id)
        started = time.perf_counter()
        components: dict[str, Any] = {}
        if entry.tiny_vae:
            from t2i_core.engine import tiny_vae

            vae, reason = tiny_vae.load(entry.tiny_vae, dtype)
            if vae is None:  # a speed option: the model still loads, with its own VAE
                log.warning("%s: tiny VAE %s not used: %s", entry.id, entry.tiny_vae, reason)
            else:
                components["vae"] = vae
        t2i = AutoPipelineForText2Image.from_pretrained(path, dtype=dtype, local_files_only=True, **components)
        memory = entry.memory
        if memory.cpu_offload and self.device.startswith("cuda"):
            t2i.enable_model_cpu_offload(device=self.device)
        else:
            t2i.to(self.device)
        if memory.vae_slicing:
            t2i.vae.enable_slicing()
        if memory.vae_tiling:
            t2i.vae.enable_tiling()
        if memory.attention_slicing:
            t2i.enable_attention_slicing()
        t2i.set_progress_bar_config(disable=True)
        dedupe_text_encoders(t2i)  # shared with the edit pipeline below
        if self.speedups.any:
            log.info("%s: %s", entry.id, ", ".join(apply_speedups(t2i, self.speedups)))
        # The edit pipeline reuses the same modules: no second copy of the weights.
        i2i = AutoPipelineForImage2Image.from_pipe(t2i)
        i2i.set_progress_bar_config(disable=True)
        model = LoadedModel(entry, t2i, i2i, time.perf_counter() - started, module_bytes(t2i))
        log.info("loaded %s on %s as %s in %.2fs (%d bytes)", entry.id, self.device, dtype, model.load_s, model.bytes)
        metrics.record_model_load(entry.id, model.load_s)
        return model

    # ---- memory --------------------------------------------------------------------------------
    def used_bytes(self) -> int:
        with self._cond:
            return sum(m.bytes for m in self._loaded.values())

    def _make_room(self, need: int, exclude: str | None = None) -> None:
        """Unload least recently used idle models until ``need`` more bytes fit the budget."""
        if not self.budget_bytes:
            return
        freed = False
        with self._cond:
            while sum(m.bytes for m in self._loaded.values()) + need > self.budget_bytes:
                victim = next((mid for mid, m in self._loaded.items() if m.in_flight == 0 and mid != exclude), None)
                if victim is None:
                    log.warning("memory budget %d exceeded, but every loaded model is in use", self.budget_bytes)
                    break
                del self._loaded[victim]
                self.evicted.append(victim)
                log.info("unloaded %s (least recently used) to stay within %d bytes", victim, self.budget_bytes)
                freed = True
        if freed:
            self._free()

    def unload(self, model_id: str) -> bool:
        """Unload ``model_id``; False when it was not loaded; ModelBusy while requests use it."""
        self.registry.get(model_id)
        with self._cond:
            model = self._loaded.get(model_id)
            if model is None:
                return False
            if model.in_flight:
                raise ModelBusy(
                    f"model {model_id!r} has {model.in_flight} request(s) in flight; unload it once they finish",
                    param="model",
                )
            del self._loaded[model_id]
        self._free()
        return True

    def free_cache(self, collect: bool = True) -> None:
        """Return cached, unused accelerator memory (after an out-of-memory error). ``collect=False``
        skips the garbage collection (0.4 s in a loaded engine) when one ran moments ago."""
        self._free(collect)

    def _free(self, collect: bool = True) -> None:
        if collect:
            gc.collect()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    # ---- states --------------------------------------------------------------------------------
    def loaded_ids(self) -> list[str]:
        with self._cond:
            return list(self._loaded)

    def states(self) -> list[dict[str, Any]]:
        with self._cond:
            loaded = {mid: (m.bytes, m.in_flight, m.load_s) for mid, m in self._loaded.items()}
            loading = set(self._loading)
            failures = dict(self._failures)
        out = []
        for entry in self.registry.entries():
            row: dict[str, Any] = {"id": entry.id, "state": "available", "reason": None,
                                   "default": entry.id == self.registry.default_id}
            if entry.id in loaded:
                row.update(state="loaded", bytes=loaded[entry.id][0], in_flight=loaded[entry.id][1],
                           load_s=round(loaded[entry.id][2], 3))
            elif entry.id in loading:
                row["state"] = "loading"
            else:
                reason = entry.unavailable_reason() or failures.get(entry.id)
                if reason:
                    row.update(state="unavailable", reason=reason)
            out.append(row)
        return out
