"""The built-in tiny pipeline: offline, deterministic, loadable by plain diffusers, a real SD layout."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from t2i_core.weights.tiny import build_tiny_pipeline, write_clip_tokenizer

from t2i_core.weights.tiny_pipelines import ensure_tiny_pipeline


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.safetensors"))
    }


def test_same_weights_every_build(tmp_path):
    a = build_tiny_pipeline("sd", tmp_path / "a")
    b = build_tiny_pipeline("sd", tmp_path / "b")
    assert _digest(a) and _digest(a) == _digest(b)


def test_loads_with_plain_diffusers_offline_and_has_sd_layout():
    from diffusers import StableDiffusionPipeline

    folder = ensure_tiny_pipeline("sd")
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    assert pipe.vae_scale_factor == 8
    assert {"unet", "vae", "text_encoder", "tokenizer", "scheduler"} <= set(pipe.components)
    out = pipe("a red fox", num_inference_steps=2, height=64, width=64, output_type="np").images
    assert out.shape == (1, 64, 64, 3)


def test_tokenizer_is_written_by_the_code(tmp_path):
    from transformers import CLIPTokenizer

    size = write_clip_tokenizer(tmp_path)
    tok = CLIPTokenizer.from_pretrained(tmp_path, local_files_only=True)
    ids = tok("A photo of an astronaut riding a horse", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and max(ids) < size
    assert ids[0] == tok.bos_token_id
    # common letter pairs are merged: fewer tokens than characters
    assert len(tok("the theatre").input_ids) - 2 < len("thetheatre")


def test_cli_writes_a_folder_diffusers_loads(tmp_path):
    out = tmp_path / "tiny"
    proc = subprocess.run(
        [sys.executable, "-m", "t2i_core", "tiny", "--family", "sd", "--out", str(out)],
        capture_output=True, text=True, check=True,
    )
    assert "wrote tiny sd pipeline" in proc.stdout
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert json.loads((out / "t2i_tiny.json").read_text())["family"] == "sd"


def test_a_cache_folder_that_another_process_put_in_place_is_kept(tmp_path):
    """Engine workers build a missing cache entry together: the one that finishes second keeps the
    first one's folder (which the first may be loading from) instead of removing it."""
    from t2i_core.weights.tiny import write_folder

    out = tmp_path / "entry"

    def build_while_another_finishes(staging):
        (staging / "mine").write_text("second")
        out.mkdir()
        (out / "theirs").write_text("first")

    assert write_folder(out, build_while_another_finishes) == out
    assert sorted(p.name for p in out.iterdir()) == ["theirs"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".entry-")]  # no staging left
    write_folder(out, lambda staging: (staging / "mine").write_text("rebuilt"), replace=True)
    assert sorted(p.name for p in out.iterdir()) == ["mine"]
