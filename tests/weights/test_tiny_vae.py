"""The optional tiny VAE decoder (registry field ``tiny_vae``) on the tiny pipeline."""

from __future__ import annotations

import logging

import pytest

from t2i_core.common.config import Settings
from t2i_core.engine.core import Engine
from t2i_core.common.registry import DEFAULT_REGISTRY, TINY_SD_ID, Registry, RegistryError, load_registry_file
from t2i_core.common.schemas import EngineRequest


def engine_with(tiny_vae: str) -> Engine:
    base = Registry().get(TINY_SD_ID)
    entry = base.model_copy(update={"id": "test/tiny-vae", "tiny_vae": tiny_vae})
    return Engine(Settings(dtype="float32"), registry=Registry(entries=[base, entry], default=TINY_SD_ID))


def run(engine: Engine, kind: str) -> list:
    extra = dict(image=bytes(64 * 64 * 3), strength=0.5) if kind == "edit" else {}
    return engine.run([EngineRequest(model="test/tiny-vae", mode=kind, prompt="x", steps=2, guidance_scale=0.0,
                                     width=64, height=64, seed=s, **extra) for s in (1, 2)])


def test_generate_and_edit_decode_with_the_tiny_vae():
    engine = engine_with("tiny:taesd")
    loaded = engine.load("test/tiny-vae")
    assert type(loaded.text2image.vae).__name__ == "AutoencoderTiny"
    assert loaded.image2image.vae is loaded.text2image.vae
    for kind in ("generate", "edit"):
        results = run(engine, kind)
        assert all(r.error is None and len(r.pixels) == 64 * 64 * 3 for r in results), results[0].error
        assert results[0].pixels != results[1].pixels
        assert "vae_decoding" in results[0].stages


def test_a_missing_tiny_vae_leaves_the_models_own(caplog):
    engine = engine_with("hub:nobody/not-cached-taesd")
    with caplog.at_level(logging.WARNING, logger="t2i.models"):
        loaded = engine.load("test/tiny-vae")
    assert type(loaded.text2image.vae).__name__ == "AutoencoderKL"
    assert "not in the local Hugging Face cache" in caplog.text and "hf download nobody/not-cached-taesd" in caplog.text
    assert all(r.error is None for r in run(engine, "generate"))


@pytest.mark.parametrize("bad", ["random:nope", "s3:bucket", "tiny:"])
def test_bad_tiny_vae_sources_are_refused_by_the_registry(tmp_path, bad):
    import json

    data = json.loads(DEFAULT_REGISTRY.read_text())
    data["models"][0]["tiny_vae"] = bad
    path = tmp_path / "models.json"
    path.write_text(json.dumps(data))
    with pytest.raises(RegistryError, match="tiny_vae"):
        load_registry_file(path)
