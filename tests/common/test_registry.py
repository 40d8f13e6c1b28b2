"""Registry: ids, metadata, defaults; the "auto" default; hub models read only from the local cache."""

from __future__ import annotations

import pytest

from t2i_core.common.errors import ModelUnavailable, UnknownModel
from t2i_core.common.registry import SD_TURBO_ID, TINY_SD_ID, Registry


def _fake_hub_cache(hf_home, repo_id: str) -> None:
    """The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<rev>/...}."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (snap / "model_index.json").write_text("{}")


def test_required_entries_and_metadata():
    reg = Registry()
    for model_id in (TINY_SD_ID, SD_TURBO_ID, "stabilityai/sdxl-turbo"):
        entry = reg.get(model_id)
        assert entry.metadata()["id"] == model_id
        assert set(entry.metadata()) == {"publisher", "family", "version", "id"}
        assert entry.defaults.steps >= 1 and entry.defaults.width % 8 == 0
    assert reg.get("stabilityai/sdxl-turbo").metadata() == {
        "publisher": "stabilityai", "family": "sdxl", "version": "turbo", "id": "stabilityai/sdxl-turbo"
    }


def test_auto_falls_back_to_tiny_and_says_how_to_get_sd_turbo():
    reg = Registry(default="auto")
    assert reg.default_id == TINY_SD_ID and reg.using_fallback
    reason = reg.get(SD_TURBO_ID).unavailable_reason()
    assert "not in the local Hugging Face cache" in reason and "hf download stabilityai/sd-turbo" in reason
    with pytest.raises(ModelUnavailable, match="sd-turbo"):
        reg.get(SD_TURBO_ID).local_path()


def test_auto_picks_sd_turbo_when_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    _fake_hub_cache(tmp_path, SD_TURBO_ID)
    reg = Registry(default="auto")
    assert reg.default_id == SD_TURBO_ID and not reg.using_fallback
    assert reg.get(SD_TURBO_ID).local_path() == SD_TURBO_ID


def test_unknown_model_names_the_known_ones():
    with pytest.raises(UnknownModel) as info:
        Registry().get("nope/model")
    assert "'nope/model'" in info.value.message and TINY_SD_ID in info.value.message
    assert info.value.status == 404 and info.value.code == "model_not_found"
    with pytest.raises(UnknownModel):
        Registry(default="nope/model")


def test_benchmark_architectures_are_not_served_to_clients(tmp_path, monkeypatch):
    """A client naming a full-size random architecture would make the engine build it (minutes, GBs)."""
    from t2i_core.common.errors import UnknownModel
    from t2i_core.devtools.bench.registry import bench_registry_file

    served = Registry()
    assert not [e.id for e in served.entries() if e.source.startswith("random:")]
    with pytest.raises(UnknownModel):
        served.get("random/sdxl-turbo-arch")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    bench = Registry(path=bench_registry_file())
    assert {"random/sd-turbo-arch", "random/sdxl-turbo-arch"} <= {e.id for e in bench.entries()}
    assert {e.id for e in served.entries()} <= {e.id for e in bench.entries()}
