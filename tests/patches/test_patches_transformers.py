"""The transformers workaround: Qwen-Image-Edit's processor loads without torchvision (its video
processor left out), through ``install_patches`` in the process that imports transformers; the image
path stays transformers' own."""

from __future__ import annotations

import pytest

from conftest import ROOT

from t2i_core.weights.tiny_pipelines import ensure_tiny_pipeline

LOAD = """
import sys
from transformers import Qwen2VLProcessor
from PIL import Image
try:
    processor = Qwen2VLProcessor.from_pretrained(sys.argv[1], local_files_only=True)
except Exception as exc:
    print("refused", type(exc).__name__)
    raise SystemExit
text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}])
out = processor(text=[text], images=[Image.new("RGB", (56, 56))], return_tensors="pt")
print("loaded", processor.video_processor, tuple(out["image_grid_thw"][0].tolist()))
"""


def run(code: str, *args: str) -> str:
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ))
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def processor_folder() -> str:
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        pytest.skip("torchvision is installed: the processor loads without the patch, which then changes nothing")
    return str(ensure_tiny_pipeline("qwen-image-edit") / "processor")


def test_without_the_patch_the_processor_does_not_load(processor_folder):
    assert run(LOAD, processor_folder).startswith("refused")


def test_install_patches_makes_it_load_when_transformers_is_imported(processor_folder):
    installed = "from t2i_core.common.config import Settings\nfrom t2i_core.patches import install_patches\n" \
                "install_patches(Settings())\n"
    # the image (56 px) comes out as 4 x 4 patches of 14 px, one frame: the image processor is transformers'
    assert run(installed + LOAD, processor_folder) == "loaded None (1, 4, 4)"


def test_on_another_transformers_version_it_changes_nothing(monkeypatch):
    import transformers.processing_utils as processing

    from t2i_core.patches import transformers as patch

    monkeypatch.setattr(patch, "WRITTEN_FOR", "0.0")
    before = processing._LazyAutoProcessorMapping.__getitem__
    assert patch.video_processor_optional(processing) is False
    assert processing._LazyAutoProcessorMapping.__getitem__ is before
