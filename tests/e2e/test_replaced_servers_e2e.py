"""Every request documented in a replaced server's README, sent as written (host and port aside),
answered with the shape that README documents."""

from __future__ import annotations

import base64
import io
import json
import subprocess

import pytest
from PIL import Image

pytestmark = pytest.mark.e2e


def sh(script: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", "set -euo pipefail\n" + script], cwd=cwd, capture_output=True, timeout=120)


def is_image(data: bytes, fmt: str = "PNG") -> bool:
    return Image.open(io.BytesIO(data)).format == fmt


def test_seed_000_generate_example_with_its_trailing_comma_is_a_clear_400(server, tmp_path):
    # The README's own example has a trailing comma after "steps": 20 — invalid JSON.
    proc = sh(f"""curl -s -w '\\n%{{http_code}}' -X POST {server.url}/api/image/generate \\
  -H "Content-Type: application/json" \\
  -d '{{
    "prompt": "A futuristic city skyline at sunset",
    "steps": 20,
  }}'""", tmp_path)
    body, status = proc.stdout.decode().rsplit("\n", 1)
    assert status == "400"
    error = json.loads(body)["error"]
    assert isinstance(error, str) and "not valid JSON" in error and "trailing comma" in error


def test_seed_000_generate_documented_shape(server, tmp_path):
    proc = sh(f"""curl -X POST {server.url}/api/image/generate \\
  -H "Content-Type: application/json" \\
  -d '{{
    "prompt": "A futuristic city skyline at sunset",
    "steps": 20
  }}' \\
  | jq -r '.image' | base64 -d > generated_image.png""", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert is_image((tmp_path / "generated_image.png").read_bytes())
    out = sh(f"""curl -s -X POST {server.url}/api/image/generate -H "Content-Type: application/json" \\
      -d '{{"prompt": "x", "steps": 2, "format": "jpeg"}}'""", tmp_path)
    body = json.loads(out.stdout)
    assert body["format"] == "JPEG" and isinstance(body["time"], float)
    assert is_image(base64.b64decode(body["image"]), "JPEG")


def test_seed_000_edit_example(server, tmp_path):
    Image.new("RGB", (96, 64), (200, 30, 30)).save(tmp_path / "source_image.png")
    proc = sh(f"""IMAGE_DATA=$(base64 -w 0 source_image.png)

curl -X POST {server.url}/api/image/edit \\
  -H "Content-Type: application/json" \\
  -d "{{
    \\"prompt\\": \\"Make it snowy\\",
    \\"image\\": \\"$IMAGE_DATA\\",
    \\"steps\\": 10,
    \\"strength\\": 0.8
  }}" \\
  | jq -r '.image' | base64 -d > edited_image.png""", tmp_path)
    assert proc.returncode == 0, proc.stderr
    edited = Image.open(tmp_path / "edited_image.png")
    assert edited.format == "PNG" and edited.size == (96, 64)


def test_seed_001_generate_image_returns_png_bytes(server, tmp_path):
    proc = sh(f"""curl -X POST -H "Content-Type: application/json" \\
     -d '{{"prompt":"A cinematic shot a 3 maneki neko in South America."}}' \\
     {server.url}/generate-image --output result.png""", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert is_image((tmp_path / "result.png").read_bytes())


def test_seed_002_generations_and_models(server, tmp_path):
    proc = sh(f"""curl -s -X POST {server.url}/v1/images/generations -H "Content-Type: application/json" -d '{{
    "model": "builtin/tiny-sd",
    "prompt": "A serene forest at dawn",
    "n": 2,
    "size": "512x512"
  }}'""", tmp_path)
    body = json.loads(proc.stdout)
    assert isinstance(body["created"], int) and len(body["data"]) == 2
    images = [Image.open(io.BytesIO(base64.b64decode(d["b64_json"]))) for d in body["data"]]
    assert all(i.size == (512, 512) for i in images)
    assert images[0].tobytes() != images[1].tobytes()
    models = json.loads(sh(f"curl -s {server.url}/v1/models", tmp_path).stdout)
    for m in models["models"]:
        assert {"publisher", "family", "version", "id"} <= set(m)  # plus the state (issue 4)
    sdxl = next(m for m in models["models"] if m["id"] == "stabilityai/sdxl-turbo")
    assert {k: sdxl[k] for k in ("publisher", "family", "version")} == {
        "publisher": "stabilityai", "family": "sdxl", "version": "turbo"}


def test_seed_002_documented_model_without_weights_is_a_clear_503(server, tmp_path):
    proc = sh(f"""curl -s -w '\\n%{{http_code}}' -X POST {server.url}/v1/images/generations -H "Content-Type: application/json" -d '{{
    "model": "stabilityai/sdxl-turbo", "prompt": "A serene forest at dawn", "n": 2, "size": "512x512"}}'""", tmp_path)
    body, status = proc.stdout.decode().rsplit("\n", 1)
    assert status == "503"
    assert "hf download stabilityai/sdxl-turbo" in json.loads(body)["error"]["message"]


def test_seed_003_generate_returns_png(server, tmp_path):
    proc = sh(f"""curl -s -X POST {server.url}/generate -H "Content-Type: application/json" -d '{{
  "prompt": "A futuristic city at sunset",
  "negative_prompt": "blurry, low quality",
  "num_inference_steps": 28,
  "guidance_scale": 7.0
}}' --output out.png""", tmp_path)
    assert proc.returncode == 0 and is_image((tmp_path / "out.png").read_bytes())


def test_seed_004_same_seed_same_image(server, tmp_path):
    cmd = f"""curl -X POST "{server.url}/image/generate" \\
-H "Content-Type: application/json" \\
-d '{{
    "prompt": "A highly realistic and detailed teenage girl’s minimalist room with pastel colors",
    "seed": 42,
    "guidance_scale": 7.5
}}'"""
    first, second = (json.loads(sh(cmd, tmp_path).stdout) for _ in range(2))
    assert first["message"] == "Image generated successfully"
    assert is_image(base64.b64decode(first["image_data"]))
    assert first["image_data"] == second["image_data"]


@pytest.mark.parametrize("path", ["/api/image/generate", "/generate-image", "/image/generate", "/api/image/edit"])
def test_seed_route_errors_are_one_json_object(server, tmp_path, path):
    proc = sh(f"""curl -s -w '\\n%{{http_code}}' -X POST {server.url}{path} -H "Content-Type: application/json" \\
      -d '{{"prompt": "x", "steps": 0, "image": "{base64.b64encode(b"abc").decode()}"}}'""", tmp_path)
    body, status = proc.stdout.decode().rsplit("\n", 1)
    assert status == "400"
    data = json.loads(body)
    assert list(data) == ["error"] and isinstance(data["error"], str) and "Traceback" not in body
    assert ("steps" in data["error"] and "0" in data["error"]) or "image" in data["error"]
