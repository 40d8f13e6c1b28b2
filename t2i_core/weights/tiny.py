"""Tiny random-weight diffusers pipelines of each family (SD 1.x/2.x, SDXL, SD3), built offline.

Each pipeline is real (the family's denoiser, a VAE with the real down-scale factor 8, its text
encoders, tokenizers whose vocabularies the code writes, its scheduler), only tiny: it builds in well under a second on a CPU and generates a 64 px
image in a few tens of milliseconds. Weights come from a fixed seed, so the same folder is produced on
every machine and the same seed gives the same image everywhere.

The folder is written with ``save_pretrained`` and loaded like any model on disk, with
``from_pretrained(folder, local_files_only=True)``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

TINY_FAMILIES = ("sd", "sdxl", "sd3", "sd-inpaint")
# Bump when the architecture or the weights change: it names the cache folder.
BUILDER_VERSION = "2"
WEIGHT_SEED = 20261121


def _bytes_to_unicode() -> dict[int, str]:
    """The byte-to-printable-character table that CLIP's byte-level BPE uses."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def write_clip_tokenizer(folder: Path) -> int:
    """Write a CLIP tokenizer (vocab.json, merges.txt, configs) to ``folder``; return its vocab size.

    The vocabulary holds every byte-level character, alone and as a word end, plus the letters of
    lowercase English pairs merged into a few hundred common bigrams, so prompts tokenize to short
    sequences much as with the real CLIP vocabulary.
    """
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for token in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(token, len(vocab))
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    merges: list[str] = []
    for a in letters[:16]:
        for b in letters[:16]:
            merges.append(f"{a} {b}")
            vocab.setdefault(a + b, len(vocab))
            merges.append(f"{a} {b}</w>")
            vocab.setdefault(a + b + "</w>", len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(special, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8"
    )
    (folder / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
            }
        )
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": 77,
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "do_lower_case": True,
            }
        )
    )
    return len(vocab)


def write_t5_tokenizer(folder: Path) -> int:
    """Write a small T5 (unigram) tokenizer to ``folder``; return its vocab size."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    pieces += [(c, -2.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789,.'-"]
    pieces += [("\u2581" + w, -1.5) for w in ("a", "the", "of", "and", "in", "with", "photo", "cat", "dog")]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    T5TokenizerFast(
        tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0,
        model_max_length=256,
    ).save_pretrained(folder)
    return len(pieces)


def _clip_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    vocab_size = write_clip_tokenizer(folder)
    return CLIPTokenizer.from_pretrained(folder, local_files_only=True), vocab_size


def _clip_encoder(cls, tokenizer, vocab_size: int, seed: int):
    import torch
    from transformers import CLIPTextConfig

    torch.manual_seed(seed)
    return cls(
        CLIPTextConfig(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, hidden_size=32, intermediate_size=64,
            layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2, vocab_size=vocab_size,
            max_position_embeddings=77, projection_dim=32,
        )
    )


def _vae(seed: int, **extra):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(8, 16, 16, 16),  # four blocks: down-scale factor 2**3 = 8, as in SD
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4, layers_per_block=1, norm_num_groups=8, sample_size=64, **extra,
    )


def _euler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        timestep_spacing="trailing", steps_offset=1,
    )


def _tiny_unet(**extra: Any) -> Any:
    """A two-level UNet (one downsample), the base of the tiny SD and SDXL pipelines."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(WEIGHT_SEED)
    extra.setdefault("in_channels", 4)
    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), norm_num_groups=8, **extra,
    )


def _build_sd(folder: Path, scratch: Path) -> None:
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    tokenizer, vocab_size = _clip_tokenizer(scratch / "clip")
    unet = _tiny_unet(cross_attention_dim=32, attention_head_dim=8)
    StableDiffusionPipeline(
        unet=unet, vae=_vae(WEIGHT_SEED + 1),
        text_encoder=_clip_encoder(CLIPTextModel, tokenizer, vocab_size, WEIGHT_SEED + 2),
        tokenizer=tokenizer, scheduler=_euler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(folder)


def _build_sd_inpaint(folder: Path, scratch: Path) -> None:
    """A dedicated SD inpainting checkpoint: the UNet takes 9 channels (latents, mask, masked image)."""
    from diffusers import StableDiffusionInpaintPipeline
    from transformers import CLIPTextModel

    tokenizer, vocab_size = _clip_tokenizer(scratch / "clip")
    StableDiffusionInpaintPipeline(
        unet=_tiny_unet(cross_attention_dim=32, attention_head_dim=8, in_channels=9), vae=_vae(WEIGHT_SEED + 1),
        text_encoder=_clip_encoder(CLIPTextModel, tokenizer, vocab_size, WEIGHT_SEED + 2),
        tokenizer=tokenizer, scheduler=_euler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(folder)


def _build_sdxl(folder: Path, scratch: Path) -> None:
    """SDXL: two CLIP text encoders (the second with projection) and a UNet with text-time embeddings."""
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer, vocab_size = _clip_tokenizer(scratch / "clip")
    unet = _tiny_unet(
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=8 * 6 + 32,  # six time ids * 8 + pooled projection (32)
        cross_attention_dim=64,  # the two encoders' hidden states (32 + 32), concatenated
    )
    StableDiffusionXLPipeline(
        unet=unet, vae=_vae(WEIGHT_SEED + 1),
        text_encoder=_clip_encoder(CLIPTextModel, tokenizer, vocab_size, WEIGHT_SEED + 2),
        text_encoder_2=_clip_encoder(CLIPTextModelWithProjection, tokenizer, vocab_size, WEIGHT_SEED + 3),
        tokenizer=tokenizer, tokenizer_2=tokenizer, scheduler=_euler(),
    ).save_pretrained(folder)


def _build_sd3(folder: Path, scratch: Path) -> None:
    """SD3: an MMDiT transformer, two CLIP encoders with projection and a T5 encoder; flow matching."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection, T5Config, T5EncoderModel, T5TokenizerFast

    tokenizer, vocab_size = _clip_tokenizer(scratch / "clip")
    t5_vocab = write_t5_tokenizer(scratch / "t5")
    t5_tokenizer = T5TokenizerFast.from_pretrained(scratch / "t5", local_files_only=True)
    torch.manual_seed(WEIGHT_SEED)
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=1, in_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32,
        pooled_projection_dim=64,  # the two CLIP projections (32 + 32), concatenated
        out_channels=4,
    )
    torch.manual_seed(WEIGHT_SEED + 4)
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=t5_vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        )
    )
    StableDiffusion3Pipeline(
        transformer=transformer,
        vae=_vae(WEIGHT_SEED + 1, shift_factor=0.0609, scaling_factor=1.5035,
                 use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=_clip_encoder(CLIPTextModelWithProjection, tokenizer, vocab_size, WEIGHT_SEED + 2),
        text_encoder_2=_clip_encoder(CLIPTextModelWithProjection, tokenizer, vocab_size, WEIGHT_SEED + 3),
        text_encoder_3=t5, tokenizer=tokenizer, tokenizer_2=tokenizer, tokenizer_3=t5_tokenizer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    ).save_pretrained(folder)


_BUILDERS = {"sd": _build_sd, "sdxl": _build_sdxl, "sd3": _build_sd3, "sd-inpaint": _build_sd_inpaint}


def write_folder(out: Path, build: Callable[[Path], None], replace: bool = False) -> Path:
    """Have ``build`` fill a staging folder beside ``out``, then put it in place of ``out`` in one
    rename, so that a reader never sees a half-written pipeline; return ``out``. Unless ``replace``,
    an ``out`` that another process put in place meanwhile (engine workers building a cache entry
    together) is kept: removing a folder that another process is loading from breaks its load."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        build(staging)
        if out.exists():
            if not replace:
                return out
            shutil.rmtree(out)
        try:
            os.replace(staging, out)
        except OSError:  # ENOTEMPTY / EEXIST: another process's folder arrived first
            if replace or not out.exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def write_built_folder(out: Path, build: Callable[[Path, Path], None], stamp: dict[str, Any], replace: bool = True) -> Path:
    """``build(staging, scratch)`` into ``out`` (see ``write_folder``), with ``t2i_tiny.json`` holding
    ``stamp`` (what built it: family, builder version, weight seed)."""

    def staged(staging: Path) -> None:
        with tempfile.TemporaryDirectory() as scratch:
            build(staging, Path(scratch))
        (staging / "t2i_tiny.json").write_text(json.dumps(stamp))

    return write_folder(Path(out), staged, replace=replace)


def build_tiny_pipeline(family: str, out: Path, replace: bool = True) -> Path:
    """Write a tiny pipeline of ``family`` to ``out`` (replacing what is there, unless ``replace`` is
    false: see ``write_folder``); return ``out``."""
    if family not in _BUILDERS:
        raise ValueError(f"family must be one of {', '.join(TINY_FAMILIES)}; got {family!r}")
    stamp = {"family": family, "builder_version": BUILDER_VERSION, "seed": WEIGHT_SEED}
    return write_built_folder(out, _BUILDERS[family], stamp, replace=replace)


def tiny_cache_dir() -> Path:
    """Where built tiny pipelines are cached: ``$T2I_CACHE_DIR`` or ``~/.cache/t2i-server``."""
    root = os.environ.get("T2I_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "t2i-server"
    )
    return Path(root) / "tiny"
