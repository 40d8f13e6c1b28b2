"""An optional tiny VAE decoder per model (``AutoencoderTiny``, e.g. TAESD), from the registry's
``tiny_vae`` field. Decoding latents is a large share of a 1-step turbo image; TAESD decodes in a
fraction of the time at some cost in detail, so it is opt-in per model.

Sources: ``hub:<repo>`` (the local Hugging Face cache only, e.g. ``hub:madebyollin/taesd`` for SD 1.x/2.x
and SD-Turbo, ``hub:madebyollin/taesdxl`` for SDXL), ``local:<folder>``, ``random:taesd`` (TAESD's
architecture with random weights, for benchmarks) and ``tiny:taesd`` (a tiny one, for tests).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from t2i_core.weights.tiny import tiny_cache_dir, write_folder

TINY_VAE_KINDS = ("hub", "local", "random", "tiny")
#: TAESD's architecture (diffusers' AutoencoderTiny defaults), and a tiny one for tests
ARCH_CONFIGS: dict[str, dict[str, Any]] = {
    "random:taesd": {},
    "tiny:taesd": dict(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                       num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1)),
}


def check_tiny_vae_source(value: str) -> str:
    kind, _, ref = value.partition(":")
    if kind not in TINY_VAE_KINDS or not ref or (kind in ("random", "tiny") and value not in ARCH_CONFIGS):
        raise ValueError(
            f"tiny_vae must be hub:<repo>, local:<folder>, {' or '.join(ARCH_CONFIGS)}; got {value!r}"
        )
    return value


def ensure_built(source: str) -> Path:
    """The folder of a built (``tiny:`` or ``random:``) tiny VAE, built once."""
    folder = tiny_cache_dir().parent / "tiny-vae" / source.replace(":", "-")
    if not (folder / "config.json").is_file():
        def build(staging: Path) -> None:
            import torch
            from diffusers import AutoencoderTiny

            torch.manual_seed(0)
            AutoencoderTiny(**ARCH_CONFIGS[source]).save_pretrained(staging)

        write_folder(folder, build)
    return folder


def load(path: str, dtype: Any) -> Any:
    """The AutoencoderTiny in the folder ``path`` (``weights.sources.resolve`` of a ``tiny_vae`` source)."""
    from diffusers import AutoencoderTiny

    return AutoencoderTiny.from_pretrained(path, torch_dtype=dtype, local_files_only=True)
