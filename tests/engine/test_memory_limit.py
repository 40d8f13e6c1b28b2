"""A real memory limit: the engine in a cgroup, as in a container. A request within the API's limits
whose whole decode would pass the limit is decoded in tiles instead of getting the engine killed.

Needs the right to create a memory cgroup (root, or a delegated cgroup); skipped elsewhere."""

from __future__ import annotations

import pytest

from t2i_core.devtools import cgroup
from t2i_core.devtools.bench.memory_probe import measure

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not cgroup.available(), reason="cannot create a memory cgroup here")]
#: the engine's process (Python, torch, diffusers: ~0.45 GB) and a tiny-model image fit; a 1024 px
#: float64 image decoded whole (~1.7 GB more) does not
LIMIT = 1536 * 2**20


def test_an_image_whose_whole_decode_would_pass_the_containers_limit_is_decoded_in_tiles():
    spec = {"part": "engine", "model": "builtin/tiny-sd", "size": 1024, "steps": 2, "threads": 2}
    with cgroup.memory_cgroup(LIMIT) as limited:
        result = measure(spec, timeout_s=600, cgroup=limited)
        kills = limited.oom_kills()
    assert kills == 0 and "failed" not in result, (kills, result.get("returncode"), result.get("failed", "")[-800:])
    assert result["errors"] == [] and result["plan"]["tile"] > 0
    assert result["peak"] < LIMIT
