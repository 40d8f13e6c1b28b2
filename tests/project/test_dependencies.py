"""The design card's packages are installed and seen by the libraries that use them."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_accelerate_is_installed_and_diffusers_uses_it():
    """Without accelerate, diffusers loads with low_cpu_mem_usage=False (slower, twice the memory for
    large models) and enable_model_cpu_offload, which a registry entry can turn on, raises on a GPU."""
    import accelerate  # noqa: F401
    from diffusers.utils import is_accelerate_available

    assert is_accelerate_available()


def test_every_requirements_file_pins_the_design_packages():
    for name in ("requirements.txt", "requirements-rocm.txt"):
        pinned = {line.split("==")[0].lower() for line in (ROOT / name).read_text().splitlines()
                  if "==" in line and not line.startswith("#")}
        assert {"accelerate", "bentoml", "diffusers", "transformers", "pillow", "pydantic"} <= pinned, name
