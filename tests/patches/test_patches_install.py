"""``install_patches`` (one call at the top of service.py) installs every patch: the server's at once,
the engine's when their library is imported — never importing torch or diffusers itself."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import ROOT


def run(code: str, env: dict[str, str] | None = None) -> str:
    import os

    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def test_importing_the_service_installs_the_patches_without_loading_torch():
    out = run("""
        import sys
        import service
        from _bentoml_sdk.io_models import IOMixin
        print(sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules))
        print(getattr(IOMixin.mime_type.__func__, "_t2i_patched", False))
    """)
    assert out.splitlines() == ["[]", "True"]


def test_the_engines_patches_apply_when_their_library_loads():
    out = run("""
        from t2i_core.common.config import Settings
        from t2i_core.patches import install_patches
        install_patches(Settings(compile=1))
        import torch.fx.experimental._config as fx
        from diffusers.hooks import group_offloading
        print(fx.use_duck_shape, getattr(group_offloading._get_top_level_group_offload_hook, "_t2i_patched", False))
    """)
    assert out == "False True"


def test_without_compile_torch_keeps_its_setting():
    out = run("""
        from t2i_core.common.config import Settings
        from t2i_core.patches import install_patches
        install_patches(Settings())
        import torch.fx.experimental._config as fx
        print(fx.use_duck_shape)
    """)
    assert out == "True"
