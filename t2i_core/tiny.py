"""Tiny random-weight diffusers pipelines, built offline.

The pipeline is real (a UNet, a VAE with the real down-scale factor 8, a CLIP text encoder, a CLIP
tokenizer, a scheduler), only tiny: it builds in well under a second on a CPU and generates a 64 px
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

TINY_FAMILIES = ("sd",)
# Bump when the architecture or the weights change: it names the cache folder.
BUILDER_VERSION = "1"
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


def _build_sd(folder: Path) -> None:
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tok_dir = folder / "_tokenizer_src"
    vocab_size = write_clip_tokenizer(tok_dir)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir, local_files_only=True)

    torch.manual_seed(WEIGHT_SEED)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    torch.manual_seed(WEIGHT_SEED + 1)
    vae = AutoencoderKL(
        block_out_channels=(8, 16, 16, 16),  # four blocks: down-scale factor 2**3 = 8, as in SD
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
    )
    torch.manual_seed(WEIGHT_SEED + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            hidden_size=32,
            intermediate_size=64,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=vocab_size,
            max_position_embeddings=77,
        )
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="trailing",
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    shutil.rmtree(tok_dir)


_BUILDERS = {"sd": _build_sd}


def build_tiny_pipeline(family: str, out: Path) -> Path:
    """Write a tiny pipeline of ``family`` to ``out`` (replacing what is there); return ``out``."""
    if family not in _BUILDERS:
        raise ValueError(f"family must be one of {', '.join(TINY_FAMILIES)}; got {family!r}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        _BUILDERS[family](staging)
        (staging / "t2i_tiny.json").write_text(
            json.dumps({"family": family, "builder_version": BUILDER_VERSION, "seed": WEIGHT_SEED})
        )
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def tiny_cache_dir() -> Path:
    """Where built tiny pipelines are cached: ``$T2I_CACHE_DIR`` or ``~/.cache/t2i-server``."""
    root = os.environ.get("T2I_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "t2i-server"
    )
    return Path(root) / "tiny"


def ensure_tiny_pipeline(family: str) -> Path:
    """Return the cached folder of the tiny ``family`` pipeline, building it first if absent."""
    folder = tiny_cache_dir() / f"{family}-v{BUILDER_VERSION}"
    if not (folder / "model_index.json").is_file():
        build_tiny_pipeline(family, folder)
    return folder
