"""Ship it: the Bento (contents, model, Dockerfile base image and torch pin), serving the built Bento,
the ROCm variant, and Kubernetes manifests that match what the server really has."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import IN_PROCESS_ENV, ROOT, free_port

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
CUDA_IMAGE = "nvidia/cuda:13.0.2-base-ubuntu22.04"


@pytest.fixture(scope="module")
def bento_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("bentoml-home")
    env = {**os.environ, "BENTOML_HOME": str(home)}
    subprocess.run([sys.executable, "-m", "t2i_core", "pull", "builtin/tiny-sd"], env=env, cwd=ROOT,
                   check=True, capture_output=True, timeout=300)
    return home, env


def build(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run([str(BIN / "bentoml"), "build", *args, str(ROOT)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return re.search(r'Successfully built Bento\(tag="([^"]+)"\)', proc.stdout + proc.stderr).group(1)


@pytest.fixture(scope="module")
def cuda_bento(bento_home):
    home, env = bento_home
    tag = build(env)
    name, version = tag.split(":")
    return tag, home / "bentos" / name / version, env


def test_bento_contents(cuda_bento, tmp_path):
    tag, bento, env = cuda_bento
    src = bento / "src"
    for path in ("service.py", "configuration.yaml", "models.json", "t2i_core/engine/core.py", "t2i_core/weights/tiny.py",
                 "t2i_core/api/surfaces/openai_images.py"):
        assert (src / path).is_file(), path
    assert not (src / "tests").exists() and not (src / ".venv").exists()
    assert not list(src.rglob("__pycache__"))
    info = yaml.safe_load((bento / "bento.yaml").read_text())
    (model,) = info["models"]
    assert model["tag"].startswith("t2i-builtin-tiny-sd:")
    # the exported Bento (what containerize and push use) carries the model's files
    archive = tmp_path / "t2i.bento"
    subprocess.run([str(BIN / "bentoml"), "export", tag, str(archive)], env=env, check=True, capture_output=True, timeout=300)
    import tarfile

    names = tarfile.open(archive).getnames()
    version = model["tag"].split(":")[1]
    assert f"./models/t2i-builtin-tiny-sd/{version}/model_index.json" in names
    assert f"./models/t2i-builtin-tiny-sd/{version}/unet/diffusion_pytorch_model.safetensors" in names
    assert info["service"] == "service:API"
    assert {s["name"] for s in info["services"]} == {"t2i", "t2i_engine"}
    envs = {e["name"]: e.get("value") for e in info["envs"]}
    assert envs["BENTOML_CONFIG"] == "/home/bentoml/bento/src/configuration.yaml"
    assert "HF_TOKEN" in envs


def test_dockerfile_is_cuda13_and_torch_is_the_cuda13_build(cuda_bento):
    _, bento, _ = cuda_bento
    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    first_from = next(line for line in dockerfile.splitlines() if line.startswith("FROM "))
    assert first_from == f"FROM {CUDA_IMAGE} AS base-container"
    requirements = (bento / "env" / "python" / "requirements.txt").read_text()
    assert re.search(r"^torch==2\.13\.0\b", requirements, re.M)
    # torch 2.13.0 on PyPI requires cuda-toolkit==13.0.3 (CUDA 13): the image's CUDA major must be 13
    assert CUDA_IMAGE.split(":")[1].startswith("13.")
    assert "pip install uv" in dockerfile and "python3-pip" in dockerfile


def test_the_built_bento_serves(cuda_bento):
    tag, _, env = cuda_bento
    port = free_port()
    log = open(Path(env["BENTOML_HOME"]) / "serve.log", "wb")
    proc = subprocess.Popen([str(BIN / "bentoml"), "serve", tag, "--host", "127.0.0.1", "--port", str(port)],
                            # the server's defaults (encoder processes too), not the in-process tests' settings
                            env={**{k: v for k, v in env.items() if k not in IN_PROCESS_ENV},
                                 "T2I_CACHE_DIR": str(Path(env["BENTOML_HOME"]) / "no-tiny-cache")},
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        import time

        for _ in range(240):
            try:
                r = httpx.post(f"http://127.0.0.1:{port}/generate", json={"prompt": "from the bento", "seed": 1}, timeout=30)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (Path(env["BENTOML_HOME"]) / "serve.log").read_text()[-3000:]
            time.sleep(0.5)
        assert r.status_code == 200 and r.headers["x-model"] == "builtin/tiny-sd"
        assert r.content.startswith(b"\x89PNG")
        # the model came from the Bento's model store, not from a fresh tiny build
        assert not (Path(env["BENTOML_HOME"]) / "no-tiny-cache").exists()
        # the playground's files are in the Bento
        for path in ("/ui", "/ui/app.js", "/ui/style.css"):
            assert httpx.get(f"http://127.0.0.1:{port}{path}", timeout=30).status_code == 200, path
    finally:
        import signal

        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()


def test_rocm_variant(bento_home):
    home, env = bento_home
    tag = build(env, "-f", str(ROOT / "bentofile.rocm.yaml"))
    name, version = tag.split(":")
    bento = home / "bentos" / name / version
    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    assert next(line for line in dockerfile.splitlines() if line.startswith("FROM ")).startswith("FROM rocm/dev-ubuntu-22.04:7.0")
    python_env = "\n".join(p.read_text() for p in (bento / "env" / "python").rglob("*") if p.is_file())
    assert "download.pytorch.org/whl/rocm7.0" in python_env
    assert re.search(r"^torch==2\.13\.0\b", (bento / "env" / "python" / "requirements.txt").read_text(), re.M)


def test_rocm_requirements_keep_the_same_pins():
    def pins(name: str) -> list[str]:
        return sorted(l.split("#")[0].strip() for l in (ROOT / name).read_text().splitlines()
                      if l.strip() and not l.startswith("#"))

    assert pins("requirements.txt") == pins("requirements-rocm.txt")
