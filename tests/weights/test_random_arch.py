"""The benchmark's full-size random-weight architectures have the real models' sizes (so their compute
is the real models'), checked on the meta device (no memory is allocated)."""

from __future__ import annotations

import pytest
import torch

from t2i_core.weights.random_arch import VAE_CONFIG, text_configs, unet_config


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("arch, unet_m, text_m", [("sd-turbo", 865.9, [340.4]), ("sdxl-turbo", 2567.5, [123.1, 694.7])])
def test_parameter_counts_match_the_real_models(arch, unet_m, text_m):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config(arch))
        vae = AutoencoderKL(**VAE_CONFIG)
        texts = [CLIPTextModel(CLIPTextConfig(**c)) for c in text_configs(arch)]
    assert count(unet) / 1e6 == pytest.approx(unet_m, rel=0.01)
    assert count(vae) / 1e6 == pytest.approx(83.7, rel=0.01)
    for model, expected in zip(texts, text_m):
        assert count(model) / 1e6 == pytest.approx(expected, rel=0.02)
