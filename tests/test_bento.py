"""`bentoml build` works offline and packs the service, the library and the configuration only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bentoml_build_offline(tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home")}
    bentoml = Path(sys.executable).with_name("bentoml")
    subprocess.run([str(bentoml), "build", str(ROOT)], env=env, cwd=ROOT, check=True,
                   capture_output=True, timeout=300)
    (bento,) = [p for p in (tmp_path / "home" / "bentos" / "t2i-server").iterdir() if p.name != "latest"]
    src = bento / "src"
    for path in ("service.py", "configuration.yaml", "models.json", "t2i_core/engine.py", "t2i_core/compat/openai_routes.py"):
        assert (src / path).is_file(), path
    assert not (src / "tests").exists() and not (src / ".venv").exists()
    info = yaml.safe_load((bento / "bento.yaml").read_text())
    assert info["service"] == "service:API"
    envs = {e["name"]: e["value"] for e in info["envs"]}
    assert envs["BENTOML_CONFIG"].endswith("src/configuration.yaml")
    assert {s["name"] for s in info["services"]} == {"t2i", "t2i_engine"}
