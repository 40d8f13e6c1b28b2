"""OpenVINO on the CPU: a pipeline's text encoder, UNet and VAE decoder run as OpenVINO models.

Each module is converted once (``openvino.convert_model``, traced from the torch module with the
batch, the sequence and the spatial sides dynamic: one model serves every batch size the adaptive
batcher forms, so a new batch size never converts or compiles again) and saved as OpenVINO IR with
float32 weights under ``$T2I_CACHE_DIR/openvino/<component>-<weights>-<graph>``: the weights'
fingerprint (names, shapes, dtypes, a float64 sum and a strided sample of each) and the graph's (the
module's class and config, the torch/diffusers/transformers/OpenVINO versions), so a restart, another
worker or another model with the same weights and config reuses the file, and changed weights, config
or libraries never do. Written under a lock, staged and marked complete last (``openvino_ir_cache``). OpenVINO's own compiled-model cache (``CACHE_DIR``) sits beside it, so a restart skips the
CPU plugin's compile too. Inference is pinned to float32 (``INFERENCE_PRECISION_HINT``: OpenVINO would
otherwise pick bfloat16 on CPUs that have it), with as many threads as torch uses.

Only the module's ``forward`` is replaced, by a function that calls the OpenVINO model for the call
forms the pipelines use and the original torch forward for any other: active LoRA adapters (their
weights live in torch), ControlNet residuals, extra conditioning, ``output_hidden_states`` (clip skip),
an attention mask, latent sides the traced graph did not cover. Module hooks (the stage timer's) still
run, and the edit and inpaint pipelines, which share the modules, get the same path.

Why not ``torch.compile(backend="openvino")``: with torch 2.13 its dynamo guards failed on the UNet's
convolutions (``IndexError`` in ``produce_guards_verbose``), and it recompiles per new shape.
"""

from __future__ import annotations

import inspect
import logging
import shutil
import threading
from pathlib import Path
from typing import Any, Callable

from t2i_core.engine import openvino_ir_cache as ir_cache
from t2i_core.engine.openvino_ir_cache import CONVERTER_VERSION, fingerprint  # noqa: F401 - re-exported

log = logging.getLogger("t2i.openvino")

#: the IR folders this process converted (a load that finds its folder on disk converts nothing)
converted: list[str] = []
_CORE: Any = None
_CORE_LOCK = threading.Lock()


def available() -> bool:
    """Whether the ``openvino`` package can be imported (checked without importing it)."""
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def cache_root() -> Path:
    """``$T2I_CACHE_DIR/openvino`` (the converted models and OpenVINO's compiled-model cache)."""
    from t2i_core.weights.tiny import tiny_cache_dir

    return tiny_cache_dir().parent / "openvino"


def _core() -> Any:
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            import openvino as ov

            _CORE = ov.Core()
        return _CORE


class _Traced:
    """What is converted for each component: a torch module with plain tensor inputs and one output."""

    @staticmethod
    def unet(unet: Any) -> Any:
        import torch

        class UNet(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.unet = unet

            def forward(self, sample: Any, timestep: Any, encoder_hidden_states: Any) -> Any:
                return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]

        return UNet()

    @staticmethod
    def text_encoder(encoder: Any) -> Any:
        import torch

        class TextEncoder(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.encoder = encoder

            def forward(self, input_ids: Any) -> Any:
                out = self.encoder(input_ids, return_dict=False)
                return out[0], out[1]

        return TextEncoder()


def _convert(kind: str, module: Any, example: tuple[Any, ...], shapes: list[list[int]], folder: Path) -> Path:
    """Convert ``module`` to IR in ``folder`` unless a complete IR is there (``openvino_ir_cache``: under
    the folder's lock, staged, marker last); returns the .xml path."""
    xml = folder / f"{kind}.xml"
    with ir_cache.locked(folder):
        ir_cache.remove_stale_staging(folder)
        if ir_cache.complete(folder) and xml.exists():
            return xml
        import openvino as ov
        import torch

        def write(staging: Path) -> None:
            with torch.no_grad():
                model = ov.convert_model(module, example_input=example, input=[ov.PartialShape(s) for s in shapes])
            ov.save_model(model, staging / xml.name, compress_to_fp16=False)  # float32 weights: the quality bound

        ir_cache.publish(write, folder)
        converted.append(folder.name)
        log.info("converted %s to OpenVINO in %s", kind, folder)
    return xml


def _load(kind: str, module: Any, example: tuple[Any, ...], shapes: list[list[int]], folder: Path) -> "OpenVinoModule":
    """The OpenVINO model of ``module`` from the disk cache, converted first if need be; a cached IR that
    fails to compile (damaged on disk) is deleted and converted once more."""
    xml = _convert(kind, module, example, shapes, folder)
    try:
        return OpenVinoModule(xml)
    except Exception as exc:  # noqa: BLE001 - whatever OpenVINO raises on a damaged file
        log.warning("the cached OpenVINO model %s did not compile (%s: %s); converting it again", folder,
                    type(exc).__name__, exc)
        with ir_cache.locked(folder):
            shutil.rmtree(folder, ignore_errors=True)
        return OpenVinoModule(_convert(kind, module, example, shapes, folder))


def _compile(xml: Path) -> Any:
    import torch

    config = {"INFERENCE_PRECISION_HINT": "f32", "CACHE_DIR": str(cache_root() / "compiled"),
              "INFERENCE_NUM_THREADS": max(1, torch.get_num_threads())}
    return _core().compile_model(str(xml), "CPU", config)


class OpenVinoModule:
    """A compiled OpenVINO model called with torch tensors; one infer request, used by one thread at a
    time (the engine runs every model call on its torch thread; the lock keeps any other caller safe)."""

    def __init__(self, xml: Path) -> None:
        self.xml = xml
        self.compiled = _compile(xml)
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()
        self.calls = 0
        self.last_shape: tuple[int, ...] = ()  # of the first input of the last call

    def __call__(self, *inputs: Any) -> list[Any]:
        import torch

        arrays = [t.detach().contiguous().numpy() for t in inputs]
        with self._lock:
            self._request.infer(arrays, share_inputs=True)
            self.calls += 1
            self.last_shape = tuple(arrays[0].shape)
            return [torch.from_numpy(self._request.get_output_tensor(i).data.copy())
                    for i in range(len(self.compiled.outputs))]


def _lora_active(module: Any) -> bool:
    """Whether any LoRA layer of ``module`` has an adapter enabled (then torch runs it: the adapters'
    weights are not in the converted model)."""
    if not getattr(module, "_hf_peft_config_loaded", False) and not getattr(module, "peft_config", None):
        return False
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) and not m.disable_adapters and m.active_adapters for m in module.modules())


def _bound(forward: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return dict(inspect.signature(forward).bind(*args, **kwargs).arguments)
    except TypeError:
        return None


def _unused(call: dict[str, Any], used: set[str]) -> bool:
    """Every argument outside ``used`` is None (or a falsy flag): the traced graph covers the call."""
    return all(v is None or v is False for k, v in call.items() if k not in used)


def install_unet(unet: Any, folder: Path) -> OpenVinoModule:
    import torch
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

    cfg = unet.config
    channels, dim = cfg.in_channels, cfg.cross_attention_dim
    example = (torch.randn(2, channels, 16, 16), torch.tensor([999.0, 999.0]), torch.randn(2, 77, dim))
    ov_unet = _load("unet", _Traced.unet(unet), example, [[-1, channels, -1, -1], [-1], [-1, -1, dim]], folder)
    torch_forward = unet.forward
    up_factor = 2 ** getattr(unet, "num_upsamplers", 0)

    def forward(*args: Any, **kwargs: Any) -> Any:
        call = _bound(torch_forward, args, kwargs)
        if (call is None or not _unused(call, {"sample", "timestep", "encoder_hidden_states", "return_dict"})
                or call.get("encoder_hidden_states") is None or _lora_active(unet)):
            return torch_forward(*args, **kwargs)
        sample = call["sample"]
        if sample.dtype != torch.float32 or any(s % up_factor for s in sample.shape[-2:]):
            return torch_forward(*args, **kwargs)
        timestep = torch.as_tensor(call["timestep"], dtype=torch.float32).reshape(-1).expand(sample.shape[0])
        (out,) = ov_unet(sample, timestep, call["encoder_hidden_states"].to(torch.float32))
        return UNet2DConditionOutput(sample=out) if call.get("return_dict", True) else (out,)

    unet.forward = forward
    return ov_unet


def install_text_encoder(encoder: Any, folder: Path) -> OpenVinoModule:
    import torch
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    length = encoder.config.max_position_embeddings
    ov_encoder = _load("text_encoder", _Traced.text_encoder(encoder), (torch.ones(2, length, dtype=torch.int64),),
                       [[-1, -1]], folder)
    torch_forward = encoder.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        call = _bound(torch_forward, args, kwargs)
        if call is not None:  # the keyword arguments a **kwargs signature collects, flattened
            call.update(call.pop("kwargs", {}))
        if (call is None or call.get("input_ids") is None or _lora_active(encoder)
                or not _unused(call, {"input_ids", "return_dict"})):
            return torch_forward(*args, **kwargs)
        hidden, pooled = ov_encoder(call["input_ids"].to(torch.int64))
        if call.get("return_dict") is False:
            return hidden, pooled
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled)

    encoder.forward = forward
    return ov_encoder


def install_vae_decoder(decoder: Any, folder: Path) -> OpenVinoModule:
    import torch

    first = next(m for m in decoder.modules() if isinstance(m, torch.nn.Conv2d))
    channels = first.in_channels
    ov_decoder = _load("vae_decoder", decoder, (torch.randn(1, channels, 16, 16),), [[-1, channels, -1, -1]], folder)
    torch_forward = decoder.forward

    def forward(z: Any, *args: Any, **kwargs: Any) -> Any:
        if any(a is not None for a in (*args, *kwargs.values())) or z.dtype != torch.float32:
            return torch_forward(z, *args, **kwargs)
        return ov_decoder(z)[0]

    decoder.forward = forward
    return ov_decoder


#: the pipeline's components this module converts, and how
COMPONENTS: dict[str, Callable[[Any], Any]] = {
    "text_encoder": lambda pipe: pipe.text_encoder,
    "unet": lambda pipe: pipe.unet,
    "vae_decoder": lambda pipe: pipe.vae.decoder,
}
#: whose config shapes each component's graph (default: the module's own)
_CONFIG_OWNER: dict[str, Callable[[Any], Any]] = {"vae_decoder": lambda pipe: pipe.vae}
_INSTALLERS = {"text_encoder": install_text_encoder, "unet": install_unet, "vae_decoder": install_vae_decoder}
_MARK = "_t2i_openvino"


def apply(pipe: Any) -> dict[str, str]:
    """Convert (or load from the disk cache) and install each component; returns component -> "openvino"
    or the reason it stays in torch (a conversion that fails leaves that component in torch)."""
    done: dict[str, str] = {}
    for name, get in COMPONENTS.items():
        module = get(pipe)
        if getattr(module, _MARK, None) is not None:
            done[name] = "openvino"
            continue
        try:
            owner = _CONFIG_OWNER[name](pipe) if name in _CONFIG_OWNER else None
            folder = cache_root() / ir_cache.cache_key(name, module, owner)
            setattr(module, _MARK, _INSTALLERS[name](module, folder))
            done[name] = "openvino"
        except Exception as exc:  # noqa: BLE001 - an op OpenVINO cannot convert: that component stays in torch
            log.warning("OpenVINO could not take %s (%s: %s); it stays in torch", name, type(exc).__name__, exc)
            done[name] = f"torch ({type(exc).__name__})"
    return done


def held_bytes(pipe: Any) -> int:
    """Bytes the OpenVINO models of ``pipe`` hold besides torch's modules (their float32 weights, the
    size of the IR's .bin files): the torch modules stay for the calls OpenVINO does not take."""
    total = 0
    for get in COMPONENTS.values():
        module = installed(get(pipe))
        if module is not None:
            total += module.xml.with_suffix(".bin").stat().st_size
    return total


def installed(module: Any) -> OpenVinoModule | None:
    """The OpenVINO model behind ``module``'s forward (None: torch runs it)."""
    return getattr(module, _MARK, None)

