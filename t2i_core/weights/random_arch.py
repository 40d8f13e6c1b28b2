"""Full-size SD-Turbo and SDXL-Turbo architectures with random weights, for GPU benchmarks.

The compute of a denoising step depends on the architecture, not on the weights, so these measure
what the real models cost without downloading them. Built once (a few minutes on CPU, faster with a
GPU) and cached in fp16 under ``$T2I_CACHE_DIR/random``; the tokenizer is the one the code writes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

ARCHS = ("sd-turbo", "sdxl-turbo")


def unet_config(arch: str) -> dict[str, Any]:
    if arch == "sd-turbo":  # Stable Diffusion 2.1 (SD-Turbo's UNet)
        return dict(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True,
        )
    if arch == "sdxl-turbo":  # SDXL base (SDXL-Turbo's UNet)
        return dict(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        )
    raise ValueError(f"arch must be one of {', '.join(ARCHS)}; got {arch!r}")


def text_configs(arch: str) -> list[dict[str, Any]]:
    vit_h = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                 projection_dim=1024, hidden_act="gelu")
    vit_l = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 projection_dim=768, hidden_act="quick_gelu")
    vit_bigg = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                    projection_dim=1280, hidden_act="gelu")
    base = dict(vocab_size=49408, max_position_embeddings=77)
    return [{**base, **vit_h}] if arch == "sd-turbo" else [{**base, **vit_l}, {**base, **vit_bigg}]


VAE_CONFIG = dict(
    block_out_channels=(128, 256, 512, 512), in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512,
)


def clip_tokenizer() -> Any:
    """The offline CLIP tokenizer of the tiny and random-weight pipelines."""
    from transformers import CLIPTokenizer

    from t2i_core.weights.tiny import write_clip_tokenizer

    with tempfile.TemporaryDirectory() as scratch:
        write_clip_tokenizer(Path(scratch))
        return CLIPTokenizer.from_pretrained(scratch, local_files_only=True)


def clip_text_configs(arch: str, tokenizer: Any) -> list[Any]:
    """``arch``'s CLIP text encoder configs, with ``tokenizer``'s special token ids."""
    from transformers import CLIPTextConfig

    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return [CLIPTextConfig(**c, **ids) for c in text_configs(arch)]


def build(arch: str, folder: Path) -> None:
    import torch
    from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline,
                           StableDiffusionXLPipeline, UNet2DConditionModel)
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = clip_tokenizer()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**unet_config(arch)).half()
        vae = AutoencoderKL(**VAE_CONFIG, scaling_factor=0.13025 if arch == "sdxl-turbo" else 0.18215).half()
        configs = clip_text_configs(arch, tokenizer)
        scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                           timestep_spacing="trailing")
        if arch == "sd-turbo":
            pipe = StableDiffusionPipeline(vae=vae, text_encoder=CLIPTextModel(configs[0]).half(), tokenizer=tokenizer,
                                           unet=unet, scheduler=scheduler, safety_checker=None,
                                           feature_extractor=None, requires_safety_checker=False)
        else:
            pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=CLIPTextModel(configs[0]).half(),
                                             text_encoder_2=CLIPTextModelWithProjection(configs[1]).half(),
                                             tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler)
    pipe.save_pretrained(folder)


def random_folder(arch: str) -> Path:
    """Where the random-weight ``arch`` pipeline is cached (built or not)."""
    from t2i_core.weights.tiny import tiny_cache_dir

    return tiny_cache_dir().parent / "random" / arch


def ensure_random_pipeline(arch: str) -> Path:
    """The cached folder of the random-weight ``arch`` pipeline, building it first if absent."""
    from t2i_core.weights.tiny import write_folder

    folder = random_folder(arch)
    if not (folder / "model_index.json").is_file():
        write_folder(folder, lambda staging: build(arch, staging))
    return folder
