"""PyTorch's CPU threads stop spinning soon after a batch instead of milliseconds later.

libgomp, the OpenMP runtime of PyTorch's CPU wheels, keeps an idle worker thread spinning after each
parallel region before it sleeps: GOMP_SPINCOUNT iterations, 300000 by default (milliseconds of a
core after every engine call). In the server that is exactly when the API answers the batch's
requests and its encoder processes encode the images: the spinning thread held a core they needed.
With the encoder processes, 10000 gave 1.15x the images/s at 16 clients (without them: no change),
and 50000 the same; in process, batch 16 ran ~5% slower at 10000 (the threads slept between the
operators of one forward pass) and ~2% at 50000, within the noise (docs/performance.md).

libgomp reads the variable once, when it is loaded (with torch): so this runs before torch is
imported, at the top of ``service.py`` and of the command line. A spin count or wait policy the user
set wins. It changes nothing on a GPU, where the engine's CPU threads are not the ones computing.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping

SPINCOUNT = "50000"


def spin_setting(environ: Mapping[str, str]) -> str | None:
    """The GOMP_SPINCOUNT to set, or None where the user chose one (or a wait policy)."""
    if "GOMP_SPINCOUNT" in environ or "OMP_WAIT_POLICY" in environ:
        return None
    return SPINCOUNT


def shorten_openmp_spin(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Set GOMP_SPINCOUNT for this process (and its children); False when the user set one, or
    when torch is already loaded (too late to matter, so left alone)."""
    value = spin_setting(environ)
    if value is None or "torch" in sys.modules:
        return False
    environ["GOMP_SPINCOUNT"] = value
    return True
