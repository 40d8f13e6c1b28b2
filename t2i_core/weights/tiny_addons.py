"""Tiny random-weight LoRA adapters and ControlNets for the tiny pipelines, built offline.

Like the tiny pipelines (``tiny.py``, ``tiny_dit.py``) they are real: a LoRA file in the format diffusers'
``load_lora_weights`` reads (rank-4 adapters on the UNet's, or FLUX.1's transformer's, attention
projections), and a ``ControlNetModel`` built from the tiny UNet (``ControlNetModel.from_unet``) or a
``FluxControlNetModel`` from the tiny FLUX.1 transformer (``from_transformer``). Their weights come from
a seed derived from the name, and are large enough to change the image visibly, so tests can tell
"applied" from "ignored". Registry sources: ``tiny:<family>/<name>`` for an adapter (e.g.
``tiny:sd/ink``), ``tiny:<family>`` for a ControlNet.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

from t2i_core.weights.tiny import WEIGHT_SEED, tiny_cache_dir, write_folder

from t2i_core.weights.tiny_pipelines import ensure_tiny_pipeline

#: bump when the adapters' or ControlNets' architecture or weights change: it names the cache folder
CONTROLS_VERSION = "1"
LORA_FILE = "pytorch_lora_weights.safetensors"
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
CONTROL_FAMILIES = ("sd", "sdxl", "flux")


def _seed(name: str) -> int:
    return WEIGHT_SEED + zlib.crc32(name.encode("utf-8"))


def _split(ref: str) -> tuple[str, str]:
    family, _, name = ref.partition("/")
    if family not in CONTROL_FAMILIES or not name:
        raise ValueError(f"a tiny adapter source is tiny:<{'|'.join(CONTROL_FAMILIES)}>/<name>; got tiny:{ref!r}")
    return family, name


def build_tiny_adapter(ref: str, out: Path) -> Path:
    """Write the tiny LoRA ``ref`` ("sd/ink") to ``out``: one safetensors file diffusers loads."""
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    family, name = _split(ref)
    if family == "flux":
        from diffusers import FluxPipeline, FluxTransformer2DModel

        denoiser = FluxTransformer2DModel.from_pretrained(ensure_tiny_pipeline(family), subfolder="transformer",
                                                          local_files_only=True)
        saver, key = FluxPipeline, "transformer_lora_layers"
    else:
        denoiser = UNet2DConditionModel.from_pretrained(ensure_tiny_pipeline(family), subfolder="unet",
                                                        local_files_only=True)
        saver, key = (StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline), "unet_lora_layers"
    torch.manual_seed(_seed(ref))
    # init_lora_weights=False: both matrices random (the usual init makes B zero: no effect at all)
    denoiser.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=LORA_TARGETS, init_lora_weights=False))
    layers = get_peft_model_state_dict(denoiser)

    def build(staging: Path) -> None:
        saver.save_lora_weights(staging, **{key: layers}, weight_name=LORA_FILE, safe_serialization=True)
        (staging / "t2i_tiny.json").write_text(json.dumps({"adapter": ref, "version": CONTROLS_VERSION}))

    return write_folder(out, build)


def build_tiny_controlnet(family: str, out: Path) -> Path:
    """Write a tiny ControlNet for the tiny ``family`` pipeline to ``out`` (a diffusers model folder)."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    if family not in CONTROL_FAMILIES:
        raise ValueError(f"a tiny ControlNet source is tiny:<{'|'.join(CONTROL_FAMILIES)}>; got tiny:{family!r}")
    if family == "flux":
        return _build_tiny_flux_controlnet(out)
    unet = UNet2DConditionModel.from_pretrained(ensure_tiny_pipeline(family), subfolder="unet", local_files_only=True)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 16, 16))
    torch.manual_seed(_seed(f"controlnet/{family}"))
    with torch.no_grad():
        # the zero convolutions start at zero (no effect): give them weights; and make the control image's
        # embedding strong enough that the image visibly steers the result
        for block in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            block.weight.normal_(0.0, 0.1)
        for conv in controlnet.controlnet_cond_embedding.modules():
            if isinstance(conv, torch.nn.Conv2d):
                conv.weight.normal_(0.0, 0.25)

    def build(staging: Path) -> None:
        controlnet.save_pretrained(staging)

    return write_folder(out, build)


def _build_tiny_flux_controlnet(out: Path) -> Path:
    """A FluxControlNetModel from the tiny FLUX.1 transformer (one double- and one single-stream block),
    its zero-initialized projections given weights so that the control image visibly steers the image."""
    import torch
    from diffusers import FluxControlNetModel, FluxTransformer2DModel

    transformer = FluxTransformer2DModel.from_pretrained(ensure_tiny_pipeline("flux"), subfolder="transformer",
                                                         local_files_only=True)
    config = transformer.config
    controlnet = FluxControlNetModel.from_transformer(
        transformer, num_layers=1, num_single_layers=1, attention_head_dim=config.attention_head_dim,
        num_attention_heads=config.num_attention_heads)
    torch.manual_seed(_seed("controlnet/flux"))
    with torch.no_grad():
        for layer in [*controlnet.controlnet_blocks, *controlnet.controlnet_single_blocks,
                      controlnet.controlnet_x_embedder]:
            layer.weight.normal_(0.0, 0.3)

    def build(staging: Path) -> None:
        controlnet.save_pretrained(staging)

    return write_folder(out, build)


def ensure_tiny_adapter(ref: str) -> Path:
    """The cached folder of the tiny adapter ``ref``, built first if absent."""
    family, name = _split(ref)
    folder = tiny_cache_dir() / f"lora-{family}-{name}-v{CONTROLS_VERSION}"
    if not (folder / LORA_FILE).is_file():
        build_tiny_adapter(ref, folder)
    return folder


def ensure_tiny_controlnet(family: str) -> Path:
    """The cached folder of the tiny ``family`` ControlNet, built first if absent."""
    folder = tiny_cache_dir() / f"controlnet-{family}-v{CONTROLS_VERSION}"
    if not (folder / "config.json").is_file():
        build_tiny_controlnet(family, folder)
    return folder
