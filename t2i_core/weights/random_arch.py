"""Full-size SD-Turbo, SDXL-Turbo, FLUX.1 [schnell] and Z-Image-Turbo architectures with random
weights, for GPU benchmarks.

The compute of a denoising step depends on the architecture, not on the weights, so these measure
what the real models cost without downloading them. Built once (a few minutes on CPU, faster with a
GPU) and cached under ``$T2I_CACHE_DIR/random`` (the UNet ones in fp16, the DiT ones in bf16: FLUX.1
[schnell] with its T5-XXL encoder is 33 GB, Z-Image-Turbo with its Qwen3-4B encoder 20 GB); the
tokenizers are the ones the code writes (``weights.tiny``, ``weights.tiny_dit``: small vocabularies,
the encoders' own embedding tables).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

ARCHS = ("sd-turbo", "sdxl-turbo", "flux-schnell", "z-image-turbo")
#: the DiT architectures (built by ``build_dit``)
DIT_ARCHS = ("flux-schnell", "z-image-turbo")

#: FLUX.1 [schnell]'s transformer (12B; diffusers' defaults are FLUX.1's), T5-XXL and CLIP ViT-L
FLUX_TRANSFORMER = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                        num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                        guidance_embeds=False, axes_dims_rope=(16, 56, 56))
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
              decoder_start_token_id=0)
#: Z-Image-Turbo's transformer (6B; diffusers' defaults) and its Qwen3-4B text encoder
Z_IMAGE_TRANSFORMER = dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=3840, n_layers=30,
                           n_refiner_layers=2, n_heads=30, n_kv_heads=30, norm_eps=1e-5, qk_norm=True,
                           cap_feat_dim=2560, rope_theta=256.0, t_scale=1000.0, axes_dims=[32, 48, 48],
                           axes_lens=[1024, 512, 512])
QWEN3_4B = dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True)
#: the FLUX.1 VAE (Z-Image's too): 16 latent channels
FLUX_VAE = dict(block_out_channels=(128, 256, 512, 512), in_channels=3, out_channels=3, latent_channels=16,
                layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, sample_size=1024, scaling_factor=0.3611,
                shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False)


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


def dit_components(arch: str) -> dict[str, Any]:
    """The modules of a DiT architecture (on the current default device and dtype)."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel, ZImageTransformer2DModel
    from transformers import CLIPTextModel, Qwen3Config, Qwen3Model, T5Config, T5EncoderModel

    if arch == "flux-schnell":
        tokenizer = clip_tokenizer()
        return {"transformer": FluxTransformer2DModel(**FLUX_TRANSFORMER),
                "text_encoder": CLIPTextModel(clip_text_configs("sdxl-turbo", tokenizer)[0]),
                "text_encoder_2": T5EncoderModel(T5Config(**T5_XXL)), "vae": AutoencoderKL(**FLUX_VAE)}
    if arch == "z-image-turbo":
        return {"transformer": ZImageTransformer2DModel(**Z_IMAGE_TRANSFORMER),
                "text_encoder": Qwen3Model(Qwen3Config(**QWEN3_4B)), "vae": AutoencoderKL(**FLUX_VAE)}
    raise ValueError(f"arch must be one of {', '.join(DIT_ARCHS)}; got {arch!r}")


def build_dit(arch: str, folder: Path) -> None:
    """FLUX.1 [schnell] (4 steps, no guidance) or Z-Image-Turbo, random weights in bfloat16."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, ZImagePipeline
    from transformers import T5TokenizerFast

    from t2i_core.weights.tiny import write_t5_tokenizer
    from t2i_core.weights.tiny_dit import qwen_tokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # built in bfloat16: 12B float32 weights would take 48 GB
    try:
        with torch.device(device):
            parts = dit_components(arch)
    finally:
        torch.set_default_dtype(default)
    if arch == "flux-schnell":
        with tempfile.TemporaryDirectory() as scratch:
            write_t5_tokenizer(Path(scratch))
            t5_tokenizer = T5TokenizerFast.from_pretrained(scratch, local_files_only=True)
        pipe = FluxPipeline(**parts, tokenizer=clip_tokenizer(), tokenizer_2=t5_tokenizer,
                            scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False))
    else:
        pipe = ZImagePipeline(**parts, tokenizer=qwen_tokenizer(),
                              scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False))
    pipe.save_pretrained(folder)


def build(arch: str, folder: Path) -> None:
    if arch in DIT_ARCHS:
        return build_dit(arch, folder)
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
