"""The engine's OpenMP threads spin briefly after a batch unless the user chose otherwise."""

from __future__ import annotations

import os
import subprocess
import sys

from t2i_core.patches.openmp import SPINCOUNT, shorten_openmp_spin, spin_setting

from conftest import ROOT


def test_the_users_own_setting_wins():
    assert spin_setting({}) == SPINCOUNT
    assert spin_setting({"GOMP_SPINCOUNT": "300000"}) is None
    assert spin_setting({"OMP_WAIT_POLICY": "PASSIVE"}) is None


def test_it_is_set_before_torch_loads_and_never_after():
    script = ("import os, sys; import service; "
              "print(os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == [SPINCOUNT, "False"]  # importing the service does not load torch
    environ: dict[str, str] = {}
    import torch  # noqa: F401 - loaded in this test process: too late for libgomp to read the variable

    assert shorten_openmp_spin(environ) is False and environ == {}
