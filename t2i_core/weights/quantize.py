"""Quantized weights for a pipeline's components: the spec of a registry entry, and applying it.

Methods, per component (``transformer``, ``unet``, ``text_encoder``, ``text_encoder_2``, ...):

- ``fp8``: weights stored in float8 e4m3 (a plain cast, no scale), each layer cast up to the
  component's own dtype for its forward (diffusers layerwise casting). Any device but Apple MPS (no
  float8 there). Linear, conv and embedding layers go to float8 except what stays as loaded:
  diffusers' skip list (names with ``norm``, ``pos_embed``, ``patch_embed``, ``proj_in``/``proj_out``:
  on FLUX and SD3 this keeps the AdaLN modulation linears, 3.2B of FLUX.1's 11.9B weights), a
  transformers model's keep-in-float32 layers (T5's ``wo``), and in text encoders the embedding tables
  (a transformers model's ``dtype`` is its first parameter's, and pipelines cast prompt embeddings to
  it) and tied weights.
- ``int8``: weight-only int8 (torchao ``Int8WeightOnlyConfig``, per-row scales) on every ``nn.Linear``;
  CPU and GPU.
- ``gguf``: a GGUF single-file denoiser (``load_gguf_transformer``); its linear layers are dequantized
  to the compute dtype at each forward.
- ``nf4``: bitsandbytes 4-bit NormalFloat, applied while loading (``load_time_config``); CUDA only
  (diffusers refuses a machine without a GPU: quantizers/bitsandbytes/bnb_quantizer.py:64).

``fp8`` and ``int8`` are applied to a loaded pipeline (``apply_quantization``); ``gguf`` and ``nf4``
components come quantized from their loaders, and ``apply_quantization`` only checks and counts them.
The compute dtype of every method is the dtype the component was loaded in (the engine's choice per
device), so the rest of the pipeline sees the dtypes it would see unquantized.

LoRA adapters (diffusers ``load_lora_weights``) load onto ``fp8``, ``int8`` and ``gguf`` components. On
``int8`` PEFT wraps the torchao layer (peft/tuners/lora/torchao.py). On ``fp8`` PEFT would store the
adapter in float8 too (it takes the base layer's weight dtype, peft/tuners/tuners_utils.py:2160), where
CPU matmuls fail, so each cast layer gets a ``compute_dtype`` attribute, which PEFT reads first
(tuners_utils.py:2163, the convention of bitsandbytes' and GGUF's layers): adapters stay in the compute
dtype.

Nothing here imports torch at module import: the spec is read where the registry is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from t2i_core.common.errors import ModelUnavailable

METHODS = ("fp8", "int8", "gguf", "nf4")
#: components that can be quantized: the denoiser(s) and the text encoders (not the VAE: small, and
#: its convolutions decide the pixels)
COMPONENT_RE = re.compile(r"^(transformer|unet|text_encoder)(_[2-9])?$")
COMPONENTS_HINT = "transformer, transformer_2, unet, text_encoder, text_encoder_2, ... text_encoder_9"
DENOISER_RE = re.compile(r"^(transformer|unet)(_[2-9])?$")
HUB_PREFIX = "hub:"
TINY_PREFIX = "tiny:"
FIELD = "quantization"


class QuantizationError(ValueError):
    """A quantization spec that cannot be used; the message names the field and the value."""


@dataclass(frozen=True)
class ComponentQuantization:
    method: str
    #: gguf only: a local ``.gguf`` path, or ``hub:<owner>/<repo>/<path in repo>.gguf`` (HF cache only)
    file: str | None = None


@dataclass(frozen=True)
class Quantization:
    """How each component of one registry entry is quantized; components not named are not."""

    components: Mapping[str, ComponentQuantization] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.components)

    def method(self, component: str) -> str | None:
        spec = self.components.get(component)
        return spec.method if spec else None

    def describe(self) -> dict[str, str]:
        """Component -> method, for /v1/models (no file paths)."""
        return {name: spec.method for name, spec in self.components.items()}


def parse_quantization(raw: Any, field_name: str = FIELD) -> Quantization:
    """Read a registry entry's ``quantization``: ``{"transformer": "fp8", "text_encoder_3": "int8"}``,
    a gguf component as ``{"method": "gguf", "file": "..."}``. Raises ``QuantizationError``."""
    if raw is None:
        return Quantization()
    if isinstance(raw, Quantization):
        return raw
    if not isinstance(raw, Mapping):
        raise QuantizationError(f"{field_name} must map component names to a method; got {raw!r}")
    parsed: dict[str, ComponentQuantization] = {}
    for name, value in raw.items():
        where = f"{field_name}.{name}"
        if not isinstance(name, str) or not COMPONENT_RE.match(name):
            raise QuantizationError(
                f"{field_name}: component {name!r} cannot be quantized; components: {COMPONENTS_HINT}")
        parsed[name] = _parse_component(where, name, value)
    return Quantization(parsed)


def _parse_component(where: str, name: str, value: Any) -> ComponentQuantization:
    if isinstance(value, ComponentQuantization):
        value = {"method": value.method, "file": value.file}
    if isinstance(value, str):
        value = {"method": value}
    if not isinstance(value, Mapping):
        raise QuantizationError(f"{where} must be a method ({', '.join(METHODS)}) or an object with "
                                f"'method' (and 'file' for gguf); got {value!r}")
    extra = set(value) - {"method", "file"}
    if extra:
        raise QuantizationError(f"{where}: unknown field(s) {', '.join(sorted(map(str, extra)))}; "
                                f"fields: method, file")
    method, file = value.get("method"), value.get("file")
    if method not in METHODS:
        raise QuantizationError(f"{where}.method must be one of {', '.join(METHODS)}; got {method!r}")
    if method == "gguf":
        if not DENOISER_RE.match(name):
            raise QuantizationError(f"{where}.method: gguf is for the denoiser (transformer, unet) only, "
                                    f"loaded with diffusers' from_single_file; got component {name!r}")
        if not isinstance(file, str) or not file.strip():
            raise QuantizationError(f"{where}.file: gguf needs the .gguf file (a path, or "
                                    f"hub:<owner>/<repo>/<file>.gguf); got {file!r}")
        if not file.endswith(".gguf"):
            raise QuantizationError(f"{where}.file must name a .gguf file; got {file!r}")
        if file.startswith(HUB_PREFIX) and len(file[len(HUB_PREFIX):].split("/")) < 3:
            raise QuantizationError(f"{where}.file: a hub file is hub:<owner>/<repo>/<file>.gguf; got {file!r}")
        if file.startswith(TINY_PREFIX):
            from t2i_core.weights.tiny_gguf import parse_ref

            try:
                parse_ref(file[len(TINY_PREFIX):])
            except ValueError as exc:
                raise QuantizationError(f"{where}.file: {exc}") from None
    elif file is not None:
        raise QuantizationError(f"{where}.file: only gguf takes a file; got method {method!r} and file {file!r}")
    return ComponentQuantization(method, file)


def unavailable_reason(spec: Quantization, device: str) -> str | None:
    """Why ``spec`` cannot be used on ``device`` (``cpu``, ``cuda``, ``cuda:1``, ``mps``), or None."""
    import importlib.util

    kind = device.split(":")[0]
    for name, comp in spec.components.items():
        where = f"{FIELD}.{name}"
        if comp.method == "fp8" and kind == "mps":
            return f"{where}: fp8 needs float8 tensors, which Apple MPS does not have (device {device!r})"
        if comp.method == "int8" and importlib.util.find_spec("torchao") is None:
            return f"{where}: int8 needs the torchao package, not installed"
        if comp.method == "gguf" and importlib.util.find_spec("gguf") is None:
            return f"{where}: gguf needs the gguf package, not installed"
        if comp.method == "nf4":
            if kind != "cuda":
                return f"{where}: nf4 (bitsandbytes) needs a CUDA GPU; this model runs on {device!r}"
            if importlib.util.find_spec("bitsandbytes") is None:
                return f"{where}: nf4 needs the bitsandbytes package, not installed"
    return None


def check_available(spec: Quantization, device: str) -> None:
    """Raise ``ModelUnavailable`` with the reason when ``spec`` cannot be used on ``device``."""
    reason = unavailable_reason(spec, device)
    if reason is not None:
        raise ModelUnavailable(reason, param="model")


def apply_quantization(pipe_or_components: Any, spec: Quantization, device: str) -> dict[str, int]:
    """Quantize the named components in place (fp8, int8; gguf and nf4 are checked to have come
    quantized from their loaders) and return the real bytes of every torch component, quantized or not.

    Meant for right after loading: before LoRA adapters load (they then take the compute dtype, see the
    module docstring), and before the pipeline moves to an accelerator, so that the full-precision
    weights never sit there (not yet tried on a GPU). All components are checked before any changes."""
    import torch

    components = getattr(pipe_or_components, "components", pipe_or_components)
    check_available(spec, device)
    for name, comp in spec.components.items():
        module = components.get(name)
        if not isinstance(module, torch.nn.Module):
            have = ", ".join(n for n, m in components.items() if isinstance(m, torch.nn.Module))
            raise ModelUnavailable(f"{FIELD}.{name}: the pipeline has no component {name!r} to quantize "
                                   f"(it has: {have})", param="model")
        found = quantized_method(module)
        if comp.method in ("gguf", "nf4") and found != comp.method:
            raise ModelUnavailable(f"{FIELD}.{name}: {comp.method} is applied while loading, and this "
                                   f"component was loaded {found or 'unquantized'}", param="model")
        if comp.method in ("fp8", "int8") and found is not None:
            raise ModelUnavailable(f"{FIELD}.{name}: already quantized ({found}); got {comp.method}",
                                   param="model")
    for name, comp in spec.components.items():
        if comp.method == "fp8":
            _apply_fp8(name, components[name])
        elif comp.method == "int8":
            _apply_int8(components[name])
    return {name: component_bytes(m) for name, m in components.items() if isinstance(m, torch.nn.Module)}


def _apply_fp8(name: str, module: Any) -> None:
    import torch
    from diffusers import ModelMixin
    from diffusers.hooks import apply_layerwise_casting
    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

    compute = _dtype(module)
    storage = torch.float8_e4m3fn
    if isinstance(module, ModelMixin):  # diffusers' own skip lists (model's + defaults)
        module.enable_layerwise_casting(storage_dtype=storage, compute_dtype=compute)
    else:
        # transformers' keep-in-float32 layers stay as loaded: T5's ``wo`` is one, and T5's feed-forward
        # casts its input to ``wo.weight.dtype`` outside wo's forward (transformers/models/t5/
        # modeling_t5.py:87-92), which would be float8 there
        keep = tuple(getattr(module, "_keep_in_fp32_modules", None) or ())
        skip = DEFAULT_SKIP_MODULES_PATTERN + keep + tuple(f"^{re.escape(n)}$" for n in _tied_modules(module))
        apply_layerwise_casting(module, storage, compute, skip_modules_pattern=skip,
                                skip_modules_classes=(torch.nn.Embedding,))
    for sub in module.modules():
        hooks = getattr(sub, "_diffusers_hook", None)
        if hooks is not None and hooks.get_hook("layerwise_casting") is not None:
            sub.compute_dtype = compute  # LoRA adapters (PEFT) take this dtype, not float8
    if hasattr(module, "dtype") and module.dtype != compute:  # pipelines cast prompt embeddings to it
        raise ModelUnavailable(f"{FIELD}.{name}: fp8 left the component's dtype {module.dtype} "
                               f"instead of {compute}", param="model")


def _dtype(module: Any) -> Any:
    """The dtype a model reports (diffusers and transformers models have ``dtype``), else its first
    floating-point parameter's."""
    if hasattr(module, "dtype"):
        return module.dtype
    return next(p.dtype for p in module.parameters() if p.is_floating_point())


def _tied_modules(module: Any) -> list[str]:
    """Names of the leaf modules that share a parameter with another module (tied embeddings): casting
    one would cast the other outside its forward."""
    owners: dict[int, list[str]] = {}
    for name, sub in module.named_modules(remove_duplicate=False):
        for param in sub.parameters(recurse=False):
            owners.setdefault(id(param), []).append(name)
    return sorted({n for names in owners.values() if len(names) > 1 for n in names})


def _apply_int8(module: Any) -> None:
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    # set_inductor_config=False: quantizing must not change torch.compile settings process-wide
    quantize_(module, Int8WeightOnlyConfig(set_inductor_config=False))


def quantized_method(module: Any) -> str | None:
    """Which of ``METHODS`` ``module`` carries, by what its layers hold; None when unquantized."""
    for sub in module.modules():
        hooks = getattr(sub, "_diffusers_hook", None)
        if hooks is not None and hooks.get_hook("layerwise_casting") is not None:
            return "fp8"
        weight = getattr(sub, "weight", None)
        kind = type(weight).__name__
        if kind == "GGUFParameter":
            return "gguf"
        if kind == "Params4bit":
            return "nf4"
        if type(weight).__module__.startswith("torchao"):
            return "int8"
    return None


def component_bytes(module: Any) -> int:
    """Bytes a module's parameters and buffers hold: float8 at 1 byte, a torchao tensor by the tensors
    it is made of (int8 data + scales), GGUF and bitsandbytes weights by their packed bytes. Tensors
    sharing memory (tied weights) count once; tensors on the meta device not at all."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        total += _tensor_bytes(tensor, seen)
    return total


def _tensor_bytes(tensor: Any, seen: set[tuple[int, int]]) -> int:
    import torch

    if type(tensor) not in (torch.Tensor, torch.nn.Parameter) and hasattr(tensor, "__tensor_flatten__"):
        names, _ = tensor.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(tensor, n), seen) for n in names)
    if tensor.device.type == "meta":
        return 0
    size = tensor.numel() * tensor.element_size()
    key = (tensor.data_ptr(), size)
    if key in seen:
        return 0
    seen.add(key)
    return size


def load_time_config(spec: Quantization, libraries: Mapping[str, str], compute_dtype: Any) -> Any:
    """The ``quantization_config`` for ``DiffusionPipeline.from_pretrained`` that loads the ``nf4``
    components (a diffusers or a transformers ``BitsAndBytesConfig`` each, by the library that
    ``libraries`` names for the component, as model_index.json does); None when there are none.
    Check ``unavailable_reason`` first: the configs need bitsandbytes installed."""
    names = [n for n, c in spec.components.items() if c.method == "nf4"]
    if not names:
        return None
    from diffusers import BitsAndBytesConfig as DiffusersBnb
    from diffusers import PipelineQuantizationConfig
    from transformers import BitsAndBytesConfig as TransformersBnb

    kwargs = dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype)
    mapping = {}
    for name in names:
        library = libraries.get(name)
        if library not in ("diffusers", "transformers"):
            raise ModelUnavailable(f"{FIELD}.{name}: nf4 needs a diffusers or transformers component; "
                                   f"this one comes from {library!r}", param="model")
        mapping[name] = (DiffusersBnb if library == "diffusers" else TransformersBnb)(**kwargs)
    return PipelineQuantizationConfig(quant_mapping=mapping)


def resolve_gguf_file(file: str) -> str:
    """The local path of a spec's gguf ``file``: itself, a ``hub:`` file from the HF cache (never
    downloaded), or a ``tiny:<family>/<type>.gguf`` written from a tiny pipeline (``weights.tiny_gguf``).
    Raises ``ModelUnavailable`` when it is not on disk."""
    if file.startswith(TINY_PREFIX):
        from t2i_core.weights.tiny_gguf import ensure_tiny_gguf

        try:
            return str(ensure_tiny_gguf(file[len(TINY_PREFIX):]))
        except ValueError as exc:
            raise ModelUnavailable(f"{FIELD}: {exc}", param="model") from None
    if file.startswith(HUB_PREFIX):
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        owner, repo, filename = file[len(HUB_PREFIX):].split("/", 2)
        try:
            return hf_hub_download(f"{owner}/{repo}", filename, local_files_only=True)
        except LocalEntryNotFoundError:
            raise ModelUnavailable(f"{FIELD}: gguf file {file!r} is not in the Hugging Face cache "
                                   f"(weights are never downloaded while serving)", param="model") from None
    if not Path(file).is_file():
        raise ModelUnavailable(f"{FIELD}: gguf file {file!r} not found", param="model")
    return file


def load_gguf_transformer(path: str | Path, transformer_cls: type, config: str | Path, compute_dtype: Any,
                          subfolder: str | None = None) -> Any:
    """Load a GGUF denoiser: ``path`` (a spec's file: local, or ``hub:``), the architecture from
    ``config`` (a diffusers folder or hub repo id, with ``subfolder``: e.g. the entry's own folder and
    ``"transformer"``), computing in ``compute_dtype``.

    The file's tensors are named as ``transformer_cls`` names them, or as the original checkpoint
    does where diffusers has a converter for the class (``SINGLE_FILE_LOADABLE_CLASSES``); diffusers
    skips the conversion when the names already match its own."""
    from diffusers import GGUFQuantizationConfig
    from diffusers.loaders.single_file_model import SINGLE_FILE_LOADABLE_CLASSES

    if transformer_cls.__name__ not in SINGLE_FILE_LOADABLE_CLASSES:
        raise ModelUnavailable(f"{FIELD}: gguf cannot load a {transformer_cls.__name__}: diffusers' "
                               f"from_single_file does not know this class", param="model")
    local = resolve_gguf_file(str(path))
    return transformer_cls.from_single_file(
        local, config=str(config), subfolder=subfolder, local_files_only=True, dtype=compute_dtype,
        quantization_config=GGUFQuantizationConfig(compute_dtype=compute_dtype),
    )
