"""The benchmark runs end to end and writes its table and JSON (small numbers: this checks that it
works and what it reports, not how fast anything is)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_bench_command_writes_all_three_modes(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "t2i_core", "bench", "--preset", "tiny", "--out", str(out), "--repeats", "1",
         "--requests", "40", "--concurrency", "1,4", "--max-batch-size", "4"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for heading in ("raw (engine in process", "served (bentoml serve, adaptive batching)",
                    "no batching (max_batch_size=1)", "served/raw(best)"):
        assert heading in proc.stdout
    report = json.loads(out.read_text())
    assert [r["batch"] for r in report["raw"]] == [1, 2, 4, 8, 16]
    # raw measured before and after the served runs; each batch size keeps the faster, and the ratios use it
    for r in report["raw"]:
        assert r["images_per_s"] == max(r["images_per_s_before"], r["images_per_s_after"]) > 0
    assert report["raw_best_images_per_s"] == max(r["images_per_s"] for r in report["raw"])
    served_1 = report["served"][0]["images_per_s"]
    assert report["ratios"][0]["served_over_raw_best"] == served_1 / report["raw_best_images_per_s"]
    for key in ("served", "no_batching"):
        assert [r["concurrency"] for r in report[key]] == [1, 4]
        assert all(r["ok"] == r["requests"] for r in report[key])
        assert all(0 < r["p50_s"] <= r["p95_s"] <= r["p99_s"] for r in report[key])
        # CPU of the server's own processes, found under `bentoml serve`: both did work for every request
        assert all(r["api_cpu_ms_per_request"] > 0 and r["engine_cpu_ms_per_image"] > 0 for r in report[key])
    assert all(r["images_per_batch"] == 1.0 for r in report["no_batching"])
    assert {"served_over_raw_best", "served_over_no_batching"} <= set(report["ratios"][0])
    from t2i_core.patches.openmp import SPINCOUNT

    assert report["gomp_spincount"] == SPINCOUNT  # raw measured with the served engine's OpenMP spin


def test_raw_ceiling_is_the_faster_run_per_batch_size():
    from t2i_core.devtools.bench.run import best_of

    before = [{"batch": 1, "images_per_s": 100.0, "batch_latency_s": 0.01},
              {"batch": 2, "images_per_s": 150.0, "batch_latency_s": 2 / 150}]
    after = [{"batch": 1, "images_per_s": 90.0, "batch_latency_s": 1 / 90},
             {"batch": 2, "images_per_s": 180.0, "batch_latency_s": 2 / 180}]
    rows = best_of(before, after)
    assert [(r["batch"], r["images_per_s"], r["batch_latency_s"]) for r in rows] == [(1, 100.0, 0.01), (2, 180.0, 2 / 180)]
    assert [(r["images_per_s_before"], r["images_per_s_after"]) for r in rows] == [(100.0, 90.0), (150.0, 180.0)]


def test_server_processes_are_told_apart_by_service_name():
    from t2i_core.devtools.bench.cpu import _role

    worker = ["python", "-m", "_bentoml_impl.worker.service", "service:API", "--fd", "3"]
    assert _role([*worker, "--service-name", "t2i", "--backlog", "2048"]) == "api"
    assert _role([*worker, "--service-name", "t2i_engine", "--worker-id", "1"]) == "engine"
    assert _role(["bentoml", "serve", "service:API"]) is None
    assert _role(["/usr/bin/python3", "-m", "t2i_core.api.images.encoder_process"]) == "api"


def test_vae_decode_benchmark_runs():
    from t2i_core.devtools.bench.vae import decode_times

    times = decode_times(size=64, repeats=1)
    assert set(times) == {"AutoencoderKL (SD VAE)", "AutoencoderTiny (TAESD)"}
    assert all(t > 0 for t in times.values())


def test_prompt_encoding_benchmark_runs():
    from t2i_core.devtools.bench.prompts import encode_times

    times = encode_times(batch=2, distinct=1, guidance=False, repeats=1)
    assert set(times) == {"plain", "deduplicated"}
    assert all(t > 0 for t in times.values())


def test_preset_prompts_repeat_every_k_images_and_guidance_reaches_the_body():
    import dataclasses

    from t2i_core.devtools.bench.presets import PRESETS

    tiny = PRESETS["tiny"]
    assert [tiny.prompt(i) for i in (0, 1, 5)] == ["benchmark image 0", "benchmark image 1", "benchmark image 5"]
    four = dataclasses.replace(tiny, distinct_prompts=4, guidance_scale=5.0)
    assert [four.prompt(i) for i in (0, 1, 4, 5)] == ["benchmark image 0", "benchmark image 1"] * 2
    assert four.body(3)["guidance_scale"] == 5.0 and tiny.body(3)["guidance_scale"] == 0.0
    assert four.describe() == ", 4 distinct prompts, guidance 5" and tiny.describe() == ""
    assert dataclasses.replace(tiny, distinct_prompts=1).describe() == ", one prompt for every image"


def test_bench_pair_compares_servers_round_by_round(server, tmp_path):
    out = tmp_path / "pair.json"
    proc = subprocess.run(
        [sys.executable, "-m", "t2i_core", "bench-pair", f"a={server.url}", f"b={server.url}/", "--rounds", "2",
         "--requests", "12", "--concurrency", "3", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 rounds of 12 requests at 3 clients" in proc.stdout and "per-round ratio to a" in proc.stdout
    report = json.loads(out.read_text())
    assert [len(report["images_per_s"][n]) for n in ("a", "b")] == [2, 2]
    assert all(v > 0 for n in ("a", "b") for v in report["images_per_s"][n])
    assert set(report["ratio_to_first"]) == {"b"} and report["ratio_to_first"]["b"] > 0


def test_bench_stop_reports_both_ways_of_stopping(capsys):
    from t2i_core.__main__ import main

    assert main(["bench-stop", "--size", "64", "--images", "2", "--steps", "2", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("stop points: engine busy") == 2 and out.count("step callback only: engine busy") == 2
    assert "outcome: client_closed" in out


def test_bench_controls_and_previews_report_their_figures(capsys):
    from t2i_core.__main__ import main

    assert main(["bench-lora", "--arch", "tiny", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("load adapter") == 2 and "switch the active set: median" in out
    assert "two adapters: median" in out and "(1.000x)" in out
    assert main(["bench-previews", "--size", "64", "--steps", "4", "--batch", "2", "--partial", "1", "--repeats", "1"]) == 0
    assert "with one request asking 1" in capsys.readouterr().out


def test_bench_backends_compares_torch_and_openvino_plain_and_served(tmp_path):
    out = tmp_path / "backends.json"
    proc = subprocess.run(
        [sys.executable, "-m", "t2i_core", "bench", "--preset", "tiny", "--backends", "torch,openvino", "--out", str(out),
         "--repeats", "1", "--requests", "8", "--concurrency", "1,4", "--max-batch-size", "4"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "CPU backends" in proc.stdout and "openvino against torch" in proc.stdout
    report = json.loads(out.read_text())
    assert list(report["backends"]) == ["torch", "openvino"]
    for name, row in report["backends"].items():
        assert row["backend"] == name  # what the model listing said runs it
        assert [r["batch"] for r in row["raw"]] == [1, 2, 4, 8, 16]
        assert [r["concurrency"] for r in row["served"]] == [1, 4]
        assert all(r["ok"] == r["requests"] for r in row["served"])
        summary = row["summary"]
        assert summary["served_over_plain"] == summary["served_1_client_s_per_image"] / summary["plain_s_per_image"] > 0
        assert summary["clients_gain"] == row["served"][1]["images_per_s"] / row["served"][0]["images_per_s"]
    quality = report["backends"]["openvino"]["pixels_vs_torch"]
    assert quality["images"] == 16 and quality["max"] <= 2
