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
from t2i_core.common.addon_entries import AdapterEntry, ControlNetEntry
from t2i_core.common.errors import ModelBusy, ModelUnavailable, T2IError
from t2i_core.common.inpainting import loaded_channels, mode_refusal
from t2i_core.common.registry import ModelEntry, Registry
from t2i_core.engine import cpu_backend
from t2i_core.engine.lora import AdapterSlots
from t2i_core.engine.offload import apply_offload, resident_bytes
from t2i_core.weights import sources, tiny_vae
from t2i_core.weights.quantize import (
    Quantization, apply_quantization, check_available, component_bytes, load_gguf_transformer, load_time_config,
    resolve_gguf_file, unavailable_reason as quantization_unavailable,
)
from t2i_core.weights.sources import Source
from t2i_core.engine.pipeline_variants import CONTROLNET_CLASSES, assemble, mode_pipeline, pipeline_class
from t2i_core.engine.prompt_dedupe import dedupe_text_encoders
from t2i_core.engine.speedups import Speedups, adapter_slots, apply as apply_speedups

log = logging.getLogger("t2i.models")
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


#: One diffusers ``from_pretrained`` at a time in a process: it builds modules on the meta device by
#: patching torch.nn.Module for the whole process (accelerate's init_empty_weights), so two loads on two
#: threads at once break each other ("Cannot copy out of meta tensor"). An engine process loads on its
#: one torch thread anyway; this keeps two engines in one process (tests, notebooks) safe.
FROM_PRETRAINED = threading.Lock()


@dataclass
class LoadedModel:
    entry: ModelEntry
    text2image: Any
    image2image: Any
    load_s: float
    bytes: int
    last_used: float = field(default_factory=time.monotonic)
    in_flight: int = 0
    adapters: AdapterSlots = field(default_factory=AdapterSlots)
    backend: str = "torch"  # what runs it on the CPU (t2i_core/engine/cpu_backend.py)
    _variants: dict[tuple[str, str | None, str | None], Any] = field(default_factory=dict)

    def pipeline(self, mode: str, scheduler: str | None, controlnet: str | None = None,
                 controlnet_module: Any = None) -> Any:
        """The pipeline for ``mode`` (generate, edit, inpaint), with ``scheduler`` and a ControlNet
        when given: built once over the same module objects (no weight is copied). InvalidRequest when
        the model cannot run ``mode`` (see t2i_core/common/inpainting.py; the API refuses it first when
        the model's config is on disk)."""
        refusal = mode_refusal(self.entry.id, self.entry.pipeline, loaded_channels(self.text2image), mode)
        if refusal is not None:
            raise refusal
        if mode in ("generate", "edit") and scheduler is None and controlnet is None:
            return self.text2image if mode == "generate" else self.image2image
        key = (mode, scheduler, controlnet)
        if key not in self._variants:
            base = self.text2image if mode == "generate" else self.image2image
            cls = type(base) if mode != "inpaint" and controlnet is None else pipeline_class(
                self.entry.pipeline, mode, controlnet is not None)
            extra: dict[str, Any] = {"controlnet": controlnet_module} if controlnet is not None else {}
            if scheduler is not None:
                from t2i_core.common.schedulers import build_scheduler

                extra["scheduler"] = build_scheduler(scheduler, base.scheduler.config)
            self._variants[key] = assemble(cls, base, **extra)
        return self._variants[key]

    def forget_controlnet(self, controlnet: str) -> None:
        for key in [k for k in self._variants if k[2] == controlnet]:
            del self._variants[key]


@dataclass
class LoadedControlNet:
    id: str
    module: Any
    bytes: int
    load_s: float
    last_used: float = field(default_factory=time.monotonic)
    in_flight: int = 0


def module_bytes(pipe: Any) -> int:
    """Bytes of every parameter and buffer of the pipeline's torch modules."""
    import torch

    return sum(module_bytes_of(c) for c in pipe.components.values() if isinstance(c, torch.nn.Module))


def module_bytes_of(module: Any) -> int:
    """Bytes one torch module's parameters and buffers hold: their real storage, quantized ones by what
    they are made of (float8 at 1 byte, torchao int8 data and scales, GGUF and 4-bit packed bytes)."""
    return component_bytes(module)


def _weights_bytes(path: Path) -> int:
    """Size of the weight files at ``path`` (a file, or a folder's top level)."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file() and f.name.endswith(_WEIGHT_SUFFIXES))


def _control_state(entry: AdapterEntry | ControlNetEntry, loaded: dict[str, int]) -> dict[str, Any]:
    row: dict[str, Any] = {**entry.listing(), "state": "loaded" if loaded else "available", "reason": None}
    if loaded:
        row["bytes"] = sum(loaded.values())
        if isinstance(entry, AdapterEntry):
            row["loaded_in"] = sorted(loaded)
    else:
        reason = entry.unavailable_reason() if entry.source_kind != "tiny" else None
        if reason:
            row.update(state="unavailable", reason=reason)
    return row


#: bytes per weight value once loaded, per quantization method applied after loading or while loading
_QUANTIZED_VALUE_BYTES = {"fp8": 1.0, "int8": 1.0, "nf4": 0.5}


def estimate_bytes(folder: Path, dtype_size: int, quantization: Quantization | None = None) -> int:
    """Memory a diffusers folder will take once loaded: its weights' values, at the dtype's size.

    Per component folder, the values are counted from the safetensors headers (whatever dtype they are
    stored in: FLUX, Qwen-Image and SD 3.5 ship bfloat16 files without an ``.fp16.`` name); the
    full-precision files when a folder also holds ``.fp16.`` variants, else those. ``.bin`` files count
    as float32. A quantized component counts at its method's bytes per value (fp8 and int8 1, nf4 half),
    a GGUF one at its file's size.
    """
    return sum(component_estimates(folder, dtype_size, quantization).values())


def component_estimates(folder: Path, dtype_size: int, quantization: Quantization | None = None) -> dict[str, int]:
    """``estimate_bytes`` per component folder."""
    out: dict[str, int] = {}
    for component in (p for p in folder.iterdir() if p.is_dir()):
        spec = quantization.components.get(component.name) if quantization else None
        if spec is not None and spec.method == "gguf" and spec.file:
            out[component.name] = Path(resolve_gguf_file(spec.file)).stat().st_size
            continue
        files = [f for f in component.iterdir() if f.name.endswith(_WEIGHT_SUFFIXES)]
        safetensors = [f for f in files if f.name.endswith(".safetensors")] or files
        chosen = [f for f in safetensors if ".fp16." not in f.name] or safetensors
        value_bytes = _QUANTIZED_VALUE_BYTES.get(spec.method, dtype_size) if spec is not None else dtype_size
        out[component.name] = int(sum(stored_values(f) for f in chosen) * value_bytes)
    return out


def stored_values(file: Path) -> int:
    """How many weight values a file holds: a safetensors file's header names every tensor's shape
    (read without loading the data); a ``.bin`` pickle is taken as float32."""
    import json
    import math
    import struct

    if not file.name.endswith(".safetensors"):
        return file.stat().st_size // 4
    with file.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    return sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")


def load_time_components(path: str, spec: Quantization, dtype: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """What ``from_pretrained`` takes for the components quantized while loading: GGUF denoisers
    (loaded here, by the class the folder's model_index.json names) and the ``quantization_config`` of
    the nf4 ones (bitsandbytes)."""
    import json

    index = json.loads((Path(path) / "model_index.json").read_text(encoding="utf-8"))
    libraries = {name: value[0] for name, value in index.items() if isinstance(value, list) and len(value) == 2}
    components: dict[str, Any] = {}
    for name, comp in spec.components.items():
        if comp.method == "gguf":
            import diffusers

            cls = getattr(diffusers, index[name][1])
            components[name] = load_gguf_transformer(comp.file or "", cls, path, dtype, subfolder=name)
    config = load_time_config(spec, libraries, dtype)
    return components, ({"quantization_config": config} if config is not None else {})


class ModelManager:
    def __init__(self, registry: Registry, device: str, dtype_preference: str, budget_bytes: int,
                 load_timeout_s: float, speedups: Speedups | None = None, cpu_bf16: str = "auto",
                 cpu_backend: str = "torch"):
        self.registry = registry
        self.cpu_backend = cpu_backend
        self.cpu_bf16 = cpu_bf16
        self.speedups = speedups or Speedups()
        self.device = device
        self.dtype_preference = dtype_preference
        self.budget_bytes = budget_bytes
        self.load_timeout_s = load_timeout_s
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()  # least recently used first
        self._loading: set[str] = set()
        self._failures: dict[str, str] = {}
        self._cond = threading.Condition()
        self.evicted: list[str] = []  # in order, for stats and tests ("adapter:<model>:<id>", "controlnet:<id>")
        self.loads = 0
        self._controlnets: OrderedDict[str, LoadedControlNet] = OrderedDict()
        #: what the request being prepared uses: never evicted to make room for itself
        self._keep: tuple[str | None, frozenset[str], str | None] = (None, frozenset(), None)

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
        dtype = pick_dtype(self.dtype_preference, self.device, entry.cpu_dtype, self.cpu_bf16)
        quantization = entry.quantization_spec
        check_available(quantization, self.device)  # nf4 without CUDA: refused with the reason
        parts = component_estimates(Path(path), dtype.itemsize, quantization)
        memory = entry.memory
        offload = memory.offload if memory.offload != "none" else (
            "model" if memory.cpu_offload and self.device.startswith("cuda") else "none")
        offloaded = offload != "none" and self.device != "cpu"
        # offloaded to the CPU, the device holds about one component at a time (cautious for the finer modes)
        estimate = max(parts.values(), default=0) if offloaded else sum(parts.values())
        if self.budget_bytes and estimate > self.budget_bytes:
            raise ModelUnavailable(
                f"model {entry.id!r} needs about {estimate} bytes, more than the memory budget "
                f"T2I_MEMORY_BUDGET_BYTES={self.budget_bytes}", param="model",
            )
        self._make_room(estimate, exclude=entry.id)
        started = time.perf_counter()
        components: dict[str, Any] = {}
        if entry.tiny_vae:
            vae_source, label = Source.parse(entry.tiny_vae), f"tiny VAE {entry.tiny_vae}"
            reason = sources.unavailable_reason(vae_source, "vae", label)
            if reason is not None:  # a speed option: the model still loads, with its own VAE
                log.warning("%s: tiny VAE %s not used: %s", entry.id, entry.tiny_vae, reason)
            else:
                components["vae"] = tiny_vae.load(sources.resolve(vae_source, "vae", label), dtype)
        family = entry.family_traits
        with FROM_PRETRAINED:
            extra: dict[str, Any] = {}
            if quantization:
                quantized, extra = load_time_components(path, quantization, dtype)
                components.update(quantized)
            if family.dit:  # the class its folder names; the modes' pipelines are built over its modules below
                from diffusers import DiffusionPipeline

                t2i = DiffusionPipeline.from_pretrained(path, dtype=dtype, local_files_only=True, **components, **extra)
            else:
                t2i = AutoPipelineForText2Image.from_pretrained(path, dtype=dtype, local_files_only=True,
                                                                **components, **extra)
        if quantization:  # fp8 and int8 now, before the weights move to the device; gguf and nf4 checked
            sizes = apply_quantization(t2i, quantization, self.device)
            log.info("%s: quantized %s; component bytes %s", entry.id, quantization.describe(), sizes)
        if offload != "none":
            apply_offload(t2i, offload, self.device, memory.offload_blocks)
        else:
            t2i.to(self.device)
        if memory.vae_slicing:
            t2i.vae.enable_slicing()
        if memory.vae_tiling:
            t2i.vae.enable_tiling()
        if memory.attention_slicing:
            t2i.enable_attention_slicing()
        t2i.set_progress_bar_config(disable=True)
        backend = cpu_backend.apply(t2i, entry, self.device, dtype, self.cpu_backend, self.speedups)  # before the wrappers
        dedupe_text_encoders(t2i)  # shared with the edit pipeline below
        if self.speedups.any:
            log.info("%s: %s", entry.id, ", ".join(apply_speedups(t2i, cpu_backend.speedups_for(self.speedups, backend))))
        # (compiled: read now, see lora_slot.py; a denoiser OpenVINO runs is not compiled)
        adapters = adapter_slots(t2i, entry, self.registry, cpu_backend.speedups_for(self.speedups, backend))
        # The edit pipeline reuses the same modules: no second copy of the weights.
        if family.dit:
            loaded, t2i = t2i, mode_pipeline(t2i, family.generate)
            i2i = mode_pipeline(loaded, entry.edit_traits.pipeline or family.edit)
        else:
            i2i = AutoPipelineForImage2Image.from_pipe(t2i)
        i2i.set_progress_bar_config(disable=True)
        # the budget counts what stays on the device (on the CPU, every weight is in the same RAM anyway)
        on_device = module_bytes(t2i) if self.device == "cpu" else resident_bytes(t2i, offload, memory.offload_blocks)
        on_device += cpu_backend.held_bytes(t2i, backend)
        model = LoadedModel(entry, t2i, i2i, time.perf_counter() - started, on_device, adapters=adapters, backend=backend)
        log.info("loaded %s on %s as %s (%s) in %.2fs (%d bytes)", entry.id, self.device, dtype, backend, model.load_s,
                 model.bytes)
        metrics.record_model_load(entry.id, model.load_s)
        return model

    # ---- memory --------------------------------------------------------------------------------
    def used_bytes(self) -> int:
        """Bytes of the loaded models, their adapters and the loaded ControlNets."""
        with self._cond:
            return self._used()

    def _used(self) -> int:
        """``used_bytes`` for a caller holding ``_cond``."""
        return (sum(m.bytes + m.adapters.bytes() for m in self._loaded.values())
                + sum(c.bytes for c in self._controlnets.values()))

    def pinned_bytes(self) -> int:
        """Bytes of the weights in use by a request now (models and ControlNets in flight, with the
        models' active adapters): what unloading idle models and adapters cannot free."""
        with self._cond:
            models = [m for m in self._loaded.values() if m.in_flight]
            return (sum(m.bytes + sum(m.adapters.loaded[a].bytes for a, _ in m.adapters.active if a in m.adapters.loaded)
                        for m in models)
                    + sum(c.bytes for c in self._controlnets.values() if c.in_flight))

    def make_room(self, need: int, model: LoadedModel) -> None:
        """Unload idle models, adapters and ControlNets, least recently used first, until ``need`` more
        bytes (the activations of a batch of ``model``, whose active adapters stay) fit the budget."""
        self._keep = (model.entry.id, frozenset(a for a, _ in model.adapters.active), None)
        try:
            self._make_room(need)
        finally:
            self._keep = (None, frozenset(), None)

    def _make_room(self, need: int, exclude: str | None = None) -> None:
        """Unload the least recently used idle models, adapters and ControlNets until ``need`` more
        bytes fit the budget (never what the request being prepared uses)."""
        if not self.budget_bytes:
            return
        freed = False
        with self._cond:
            while self._used() + need > self.budget_bytes:
                victim = self._least_recently_used(exclude)
                if victim is None:
                    log.warning("memory budget %d exceeded, but every loaded model is in use", self.budget_bytes)
                    break
                self._evict(*victim)
                freed = True
        if freed:
            self._free()

    def _least_recently_used(self, exclude: str | None) -> tuple[str, str, str | None] | None:
        keep_model, keep_adapters, keep_controlnet = self._keep
        candidates: list[tuple[float, str, str, str | None]] = []
        for mid, model in self._loaded.items():
            if model.in_flight == 0 and mid not in (exclude, keep_model):
                candidates.append((model.last_used, "model", mid, None))
            for aid, adapter in model.adapters.loaded.items() if model.adapters.evictable else ():
                if not (mid == keep_model and aid in keep_adapters):
                    candidates.append((adapter.last_used, "adapter", mid, aid))
        for cid, controlnet in self._controlnets.items():
            if controlnet.in_flight == 0 and cid != keep_controlnet:
                candidates.append((controlnet.last_used, "controlnet", cid, None))
        return min(candidates)[1:] if candidates else None

    def _evict(self, kind: str, key: str, adapter_id: str | None) -> None:
        if kind == "model":
            del self._loaded[key]
            self.evicted.append(key)
        elif kind == "adapter":
            model = self._loaded[key]
            model.adapters.delete(model.text2image, adapter_id or "")
            self.evicted.append(f"adapter:{key}:{adapter_id}")
        else:
            del self._controlnets[key]
            for model in self._loaded.values():
                model.forget_controlnet(key)
            self.evicted.append(f"controlnet:{key}")
        log.info("unloaded %s %s%s (least recently used) to stay within %d bytes", kind, key,
                 f":{adapter_id}" if adapter_id else "", self.budget_bytes)

    # ---- adapters and ControlNets ------------------------------------------------------------
    def activate_adapters(self, model: LoadedModel, adapters: list[tuple[str, float]]) -> None:
        """Load what ``adapters`` needs into ``model`` (accounted in the budget) and make exactly
        that set active. Call on the torch thread, inside ``use``."""
        keep = (model.entry.id, frozenset(a for a, _ in adapters), self._keep[2])
        for adapter_id, _ in adapters:
            if adapter_id in model.adapters.loaded:
                continue
            entry = self.registry.adapter(adapter_id, model.entry)
            model.adapters.check_loadable(adapter_id)  # before anything is unloaded to make room for it
            path = entry.local_path()
            self._keep = keep
            try:
                self._make_room(_weights_bytes(Path(path)))
                model.adapters.load(model.text2image, adapter_id, path, entry.weight_name)
                self._make_room(0)
            except T2IError:
                raise
            except Exception as exc:  # noqa: BLE001 - a bad file: the request's error, not the engine's
                raise ModelUnavailable(f"adapter {adapter_id!r} failed to load: {type(exc).__name__}: {exc}",
                                       param="adapters") from exc
            finally:
                self._keep = (None, frozenset(), None)
        model.adapters.activate(model.text2image, adapters)

    @contextmanager
    def use_controlnet(self, controlnet_id: str | None, model: LoadedModel) -> Iterator[Any]:
        """The ControlNet module (None for none), loaded on first use and pinned during the block."""
        if controlnet_id is None:
            yield None
            return
        loaded = self._controlnets.get(controlnet_id)
        if loaded is None:
            loaded = self._load_controlnet(self.registry.controlnet(controlnet_id, model.entry), model)
        with self._cond:
            loaded.in_flight += 1
            self._controlnets.move_to_end(controlnet_id)
        try:
            yield loaded.module
        finally:
            with self._cond:
                loaded.in_flight -= 1
                loaded.last_used = time.monotonic()

    def _load_controlnet(self, entry: ControlNetEntry, model: LoadedModel) -> LoadedControlNet:
        import diffusers

        controlnet_class = getattr(diffusers, CONTROLNET_CLASSES[entry.family])
        path = Path(entry.local_path())
        denoiser = getattr(model.text2image, "unet", None) or model.text2image.transformer
        dtype = denoiser.dtype
        self._keep = (model.entry.id, frozenset(a for a, _ in model.adapters.active), entry.id)
        try:
            files = [path] if path.is_file() else [f for f in path.iterdir() if f.name.endswith(_WEIGHT_SUFFIXES)]
            self._make_room(sum(stored_values(f) for f in files) * dtype.itemsize)
            started = time.perf_counter()
            try:
                with FROM_PRETRAINED:
                    module = controlnet_class.from_pretrained(path, torch_dtype=dtype, local_files_only=True)
            except Exception as exc:  # noqa: BLE001 - a bad folder: the request's error, not the engine's
                raise ModelUnavailable(f"controlnet {entry.id!r} failed to load: {type(exc).__name__}: {exc}",
                                       param="controlnet") from exc
            # the engine's device, not the denoiser's: an offloaded denoiser waits on the CPU between calls
            module.to(self.device)
            loaded = LoadedControlNet(entry.id, module, module_bytes_of(module), time.perf_counter() - started)
            with self._cond:
                self._controlnets[entry.id] = loaded
            log.info("loaded controlnet %s in %.2fs (%d bytes)", entry.id, loaded.load_s, loaded.bytes)
            self._make_room(0)
        finally:
            self._keep = (None, frozenset(), None)
        return loaded

    def adapter_states(self) -> list[dict[str, Any]]:
        """Each registered adapter: its listing, and per model where it is loaded (bytes)."""
        with self._cond:
            where = {aid: {mid: a.bytes for mid, m in self._loaded.items() for aid2, a in m.adapters.loaded.items()
                           if aid2 == aid} for aid in (e.id for e in self.registry.adapters())}
        return [_control_state(e, where[e.id]) for e in self.registry.adapters()]

    def controlnet_states(self) -> list[dict[str, Any]]:
        with self._cond:
            loaded = {cid: c.bytes for cid, c in self._controlnets.items()}
        return [_control_state(e, {} if e.id not in loaded else {"": loaded[e.id]}) for e in self.registry.controlnets()]

    def controlnet_ids(self) -> list[str]:
        with self._cond:
            return list(self._controlnets)

    def adapter_switches(self) -> dict[str, Any]:
        with self._cond:
            switches = sum(m.adapters.switches for m in self._loaded.values())
            seconds = sum(m.adapters.switch_s for m in self._loaded.values())
        return {"adapter_switches": switches, "adapter_switch_s": round(seconds, 4)}

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
            loaded = {mid: (m.bytes, m.in_flight, m.load_s, m.backend) for mid, m in self._loaded.items()}
            loading = set(self._loading)
            failures = dict(self._failures)
        out = []
        for entry in self.registry.entries():
            row: dict[str, Any] = {"id": entry.id, "state": "available", "reason": None,
                                   "default": entry.id == self.registry.default_id}
            if entry.id in loaded:
                row.update(state="loaded", bytes=loaded[entry.id][0], in_flight=loaded[entry.id][1],
                           load_s=round(loaded[entry.id][2], 3), backend=loaded[entry.id][3])
            elif entry.id in loading:
                row["state"] = "loading"
            else:
                reason = (entry.unavailable_reason() or quantization_unavailable(entry.quantization_spec, self.device)
                          or failures.get(entry.id))
                if reason:
                    row.update(state="unavailable", reason=reason)
            out.append(row)
        return out
