"""The diffusers workaround: no module walk for group offloading until it is used; then as before.

The patch's "used" mark is per process (any test that offloads sets it), so the check runs in a
fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT

SCRIPT = """
import torch
from diffusers import UNet2DConditionModel
from diffusers.hooks import group_offloading

from t2i_core.patches.diffusers import skip_group_offload_lookup_until_used

skip_group_offload_lookup_until_used()
skip_group_offload_lookup_until_used()  # once only
unet = UNet2DConditionModel(sample_size=8, block_out_channels=(8, 16), layers_per_block=1, cross_attention_dim=8,
                            norm_num_groups=4, attention_head_dim=2,
                            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
walked = []
original_modules = unet.modules
unet.modules = lambda: (walked.append(1), original_modules())[1]  # type: ignore[method-assign]
assert unet.device == torch.device("cpu")
assert not group_offloading._is_group_offload_enabled(unet)
assert walked == []  # nothing applied group offloading in this process yet: no walk
unet.modules = original_modules  # type: ignore[method-assign]

unet.enable_group_offload(onload_device=torch.device("cpu"), offload_device=torch.device("cpu"),
                          offload_type="block_level", num_blocks_per_group=1)
assert group_offloading._is_group_offload_enabled(unet)
assert group_offloading._get_group_onload_device(unet) == torch.device("cpu")
"""


def test_group_offload_lookup_is_skipped_until_group_offloading_is_applied():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
