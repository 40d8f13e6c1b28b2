"""Random-weight LoRA adapters for a pipeline folder's denoiser (the benchmark's architectures), and a
registry file that lists them, so that a benchmark can switch adapters on a full-size model with no
download. The denoiser is built on the meta device (no memory, no weights read): only its layer shapes
are needed; the adapter's matrices are random (rank ``rank`` on the attention projections)."""

from __future__ import annotations

import json
from pathlib import Path

#: the attention projections a typical style LoRA targets (UNet and DiT blocks alike)
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def random_lora(folder: Path, out: Path, rank: int, seed: int) -> Path:
    """A random LoRA (``out``/pytorch_lora_weights.safetensors) for the denoiser of the pipeline in ``folder``."""
    import diffusers
    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    index = json.loads((Path(folder) / "model_index.json").read_text(encoding="utf-8"))
    component = "unet" if "unet" in index else "transformer"
    net_class = getattr(diffusers, index[component][1])
    pipe_class = getattr(diffusers, index["_class_name"])
    with torch.device("meta"):
        net = net_class.from_config(net_class.load_config(folder, subfolder=component, local_files_only=True))
        net.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS, init_lora_weights=False))
    shapes = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(net).items()}
    generator = torch.Generator().manual_seed(seed)
    layers = {k: torch.randn(shape, generator=generator) * (0.02 if "lora_B" in k else 1 / rank)
              for k, shape in shapes.items()}
    out.mkdir(parents=True, exist_ok=True)
    pipe_class.save_lora_weights(out, **{f"{component}_lora_layers": layers}, safe_serialization=True)
    return out / "pytorch_lora_weights.safetensors"


def with_adapters(registry_file: Path, family: str, adapters: dict[str, Path]) -> Path:
    """``registry_file`` with ``adapters`` (id -> weights file) registered for ``family``, written beside it."""
    data = json.loads(Path(registry_file).read_text(encoding="utf-8"))
    data.setdefault("adapters", []).extend(
        {"id": name, "family": family, "source": f"local:{path}", "description": "random-weight benchmark LoRA"}
        for name, path in adapters.items())
    out = Path(registry_file).with_name(Path(registry_file).stem + "-adapters.json")
    out.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return out
