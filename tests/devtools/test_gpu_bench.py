"""The GPU run (scripts/gpu_bench.sh) cannot run without a GPU; its plan is checked here, and its
every step is rehearsed on the CPU with the tiny model (--dry-run), so it works the first time a GPU
is at hand."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from dataclasses import fields

import pytest

from conftest import ROOT
from t2i_core.devtools.bench import gpu
from t2i_core.devtools.bench.presets import PRESETS


def test_the_plan_names_known_presets_models_and_settings():
    from t2i_core.common.config import Settings
    from t2i_core.common.registry import Registry
    from t2i_core.devtools.bench.registry import bench_registry_file

    registry = Registry(path=bench_registry_file())
    settings = {f"T2I_{f.name.upper()}" for f in fields(Settings)}
    for run in (*gpu.PLAN, *gpu.DRY_PLAN):
        entry = registry.get(PRESETS[run.preset].model)
        assert set(run.env) <= settings, run
        if run in gpu.PLAN:
            dit = entry.family_traits.dit
            assert PRESETS[run.preset].dtype == "bfloat16" and entry.defaults.width == (1024 if dit else 512)
            assert (entry.tiny_vae is not None) == ("TAESD" in run.label), run
            assert (run.env.get("T2I_COMPILE") == "1") == ("compile" in run.label), run
            assert (run.sizing == gpu.DIT_SIZING) == dit, run
            assert bool(entry.quantization) == ("fp8" in run.label), run
    labels = [r.label for r in gpu.PLAN]
    assert len(set(labels)) == len(labels)
    assert {"sd-turbo-arch", "sdxl-turbo-arch", "flux-schnell-arch", "flux-schnell-arch-fp8",
            "z-image-turbo-arch"} <= {r.preset for r in gpu.PLAN}
    assert any(r.env for r in gpu.PLAN) and any(not r.env for r in gpu.PLAN)
    assert gpu.GPU_SIZING.concurrency == (1, 8, 32)
    assert (gpu.DIT_SIZING.batch_sizes, gpu.DIT_SIZING.concurrency) == ((1, 4), (1, 8))


def test_the_dit_architectures_have_the_published_sizes():
    """Built on the meta device (no memory): FLUX.1's 11.9B transformer with T5-XXL (4.76B) and CLIP-L
    (123M), Z-Image's 6.15B transformer with Qwen3-4B (4.02B)."""
    import torch

    from t2i_core.weights.random_arch import dit_components

    billions = {}
    for arch in ("flux-schnell", "z-image-turbo"):
        with torch.device("meta"):
            parts = dit_components(arch)
        billions[arch] = {name: round(sum(p.numel() for p in m.parameters()) / 1e9, 2) for name, m in parts.items()}
    assert billions == {
        "flux-schnell": {"transformer": 11.89, "text_encoder": 0.12, "text_encoder_2": 4.76, "vae": 0.08},
        "z-image-turbo": {"transformer": 6.15, "text_encoder": 4.02, "vae": 0.08},
    }


def test_environment_is_restored(monkeypatch):
    monkeypatch.setenv("T2I_COMPILE", "0")
    monkeypatch.delenv("T2I_FUSE_QKV", raising=False)
    import os

    with gpu.environment({"T2I_COMPILE": "1", "T2I_FUSE_QKV": "1"}):
        assert os.environ["T2I_COMPILE"] == "1" and os.environ["T2I_FUSE_QKV"] == "1"
    assert os.environ["T2I_COMPILE"] == "0" and "T2I_FUSE_QKV" not in os.environ


def test_runs_past_the_budget_are_reported_not_started(tmp_path, capsys):
    assert gpu.main(["--dry-run", "--budget-s", "-1", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu-bench.json").read_text())
    assert [r["label"] for r in report["runs"]] == [r.label for r in gpu.DRY_PLAN]
    assert all("not started" in r["skipped"] for r in report["runs"])
    table = (tmp_path / "gpu-bench.md").read_text()
    assert table.count("not started") == len(gpu.DRY_PLAN) and "| run |" in table


def test_without_a_gpu_the_real_run_refuses(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu.main(["--out", str(tmp_path)]) == 2
    assert not (tmp_path / "gpu-bench.json").exists()


@pytest.mark.slow
@pytest.mark.e2e
def test_dry_run_measures_raw_and_served_and_writes_json_and_table(tmp_path):
    out = tmp_path / "gpu"
    proc = subprocess.run(["bash", "scripts/gpu_bench.sh", "--dry-run", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu-bench.json").read_text())
    sizing = gpu.DRY_SIZING
    assert [r["label"] for r in report["runs"]] == [r.label for r in gpu.DRY_PLAN]
    for run in report["runs"]:
        assert "error" not in run and "skipped" not in run, run
        assert run["sizing"] == json.loads(json.dumps(dataclasses.asdict(sizing)))
        assert [r["batch"] for r in run["raw"]] == list(sizing.batch_sizes)
        assert [r["concurrency"] for r in run["served"]] == list(sizing.concurrency)
        assert all(r["ok"] == r["requests"] > 0 for r in run["served"])
        assert set(run["raw"][0]["stages_s"]) == {"text_encoding", "denoising", "vae_decoding", "image_encoding"}
        # the served split comes from the server's own histograms
        assert {"denoising", "image_encoding"} <= set(run["served"][0]["stages_s"])
    assert report["runs"][1]["env"] == {"T2I_CHANNELS_LAST": "1"}
    table = (out / "gpu-bench.md").read_text()
    assert all(r.label in table for r in gpu.DRY_PLAN) and table in proc.stdout
