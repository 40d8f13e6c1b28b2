"""The container image: scripts/check_container.sh builds it and checks it for real (only with
T2I_CONTAINER_CHECK=1 and a working Docker engine); always: the script parses, skips cleanly without
Docker, and bentofile.yaml's base image is NVIDIA's `base` flavour of the CUDA major its comment names."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "check_container.sh"
SKIPPED = 77  # the script's exit status when it cannot run (no Docker engine); it prints "SKIP: <why>"


def initial_env() -> dict[str, str]:
    """The environment this process started with: conftest.py removes every T2I_* variable from
    os.environ (test isolation), T2I_CONTAINER_CHECK and the script's T2I_CHECK_* settings included."""
    try:
        raw = Path("/proc/self/environ").read_bytes()
    except OSError:
        return dict(os.environ)
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if b"=" in item)
    return {key: value for key, _, value in pairs}


def docker_problem() -> str | None:
    if shutil.which("docker") is None:
        return "no docker command on PATH"
    try:
        proc = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "docker info did not answer within 60 s"
    if proc.returncode != 0:
        return "docker info fails (no Docker engine running): " + (proc.stderr.strip().splitlines() or [""])[-1]
    return None


def test_script_parses():
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


def test_script_skips_without_docker(tmp_path):
    # a Docker daemon address where none listens: the script must say why and exit SKIPPED, building nothing
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == SKIPPED, proc.stdout + proc.stderr
    assert re.search(r"^SKIP: .+", proc.stdout, re.M), proc.stdout
    assert not (tmp_path / "no-docker.sock").exists()


def test_base_image_is_the_cuda_base_flavour_of_the_commented_major():
    text = (ROOT / "bentofile.yaml").read_text()
    base = yaml.safe_load(text)["docker"]["base_image"]
    # NVIDIA's `base` flavour: torch's nvidia-* wheels bring the CUDA and cuDNN libraries themselves
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-base-ubuntu22\.04", base)
    assert match, base
    major = match.group(1)
    comment = "\n".join(line.split("#", 1)[1] for line in text.splitlines() if "#" in line)
    comment = re.sub(r"\s+", " ", comment)
    torch_major = re.search(r"torch \S+ on PyPI is a CUDA (\d+) build", comment)
    driver_major = re.search(r"driver for CUDA (\d+)", comment)
    require = re.search(r"NVIDIA_REQUIRE_CUDA=cuda>=(\d+)\.", comment)
    assert torch_major and driver_major and require, comment
    assert torch_major.group(1) == driver_major.group(1) == require.group(1) == major, (base, comment)
    assert "`base`" in comment and "cudnn-runtime" in comment  # says why this flavour and not the other
    assert yaml.safe_load(text)["labels"]["accelerator"] == f"nvidia-cuda{major}"


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(3 * 3600)
def test_container_check():
    env = initial_env()
    if env.get("T2I_CONTAINER_CHECK") != "1":
        pytest.skip("set T2I_CONTAINER_CHECK=1 to build the container image and check it for real "
                    "(needs a Docker engine, ~30 GB of disk, downloads ~5 GB of CUDA wheels)")
    problem = docker_problem()
    if problem:
        pytest.skip(problem)
    run_env = {**os.environ, **{k: v for k, v in env.items() if k.startswith("T2I_CHECK_")}}
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=3 * 3600 - 60,
                          env=run_env, cwd=ROOT)
    print(proc.stdout[-6000:])  # the script's PASS/FAIL summary (pytest -rP shows it)
    if proc.returncode == SKIPPED:
        pytest.skip(next((l for l in proc.stdout.splitlines() if l.startswith("SKIP:")), "SKIP"))
    assert proc.returncode == 0 and "RESULT: PASS" in proc.stdout, proc.stdout[-6000:] + proc.stderr[-3000:]
