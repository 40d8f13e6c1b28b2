"""The DiT families in the registry: entries under their real hub ids with their defaults and licences,
tiny builtins of each, what their edits are (``edits``), and the checks a request meets in ``to_engine``
(sizes, strength, mask, how many input images) before any image is decoded."""

from __future__ import annotations

import json

import pytest

from t2i_core.common.errors import InvalidRequest, ModelUnavailable
from t2i_core.common.families import FAMILIES
from t2i_core.common.registry import DEFAULT_REGISTRY, Registry, RegistryError, load_registry_file
from t2i_core.common.schemas import EditRequest, GenerateRequest, to_engine

TINY = {
    "builtin/tiny-flux": "flux", "builtin/tiny-flux-kontext": "flux-kontext", "builtin/tiny-flux2-klein": "flux2-klein",
    "builtin/tiny-qwen-image": "qwen-image", "builtin/tiny-qwen-image-edit": "qwen-image-edit",
    "builtin/tiny-z-image": "z-image",
}
REAL = {
    "black-forest-labs/FLUX.1-schnell": ("flux", 4, 0.0), "black-forest-labs/FLUX.1-dev": ("flux", 28, 3.5),
    "black-forest-labs/FLUX.1-Kontext-dev": ("flux-kontext", 28, 2.5),
    "black-forest-labs/FLUX.2-klein-4B": ("flux2-klein", 4, 1.0), "Qwen/Qwen-Image": ("qwen-image", 50, 4.0),
    "Qwen/Qwen-Image-Edit": ("qwen-image-edit", 50, 4.0), "Qwen/Qwen-Image-Edit-2509": ("qwen-image-edit", 40, 4.0),
    "Tongyi-MAI/Z-Image-Turbo": ("z-image", 9, 0.0),
    "stabilityai/stable-diffusion-3.5-large": ("sd3", 28, 3.5),
    "stabilityai/stable-diffusion-3.5-medium": ("sd3", 40, 4.5),
    "stabilityai/stable-diffusion-3.5-large-turbo": ("sd3", 4, 0.0),
}


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry()


def test_every_family_has_a_tiny_builtin_and_real_entries_with_their_defaults_and_licence(registry):
    for model_id, family in TINY.items():
        entry = registry.get(model_id)
        assert (entry.pipeline, entry.source, entry.defaults.width) == (family, f"tiny:{family}", 64)
    assert {e.pipeline for e in registry.entries()} == set(FAMILIES)
    for model_id, (family, steps, guidance) in REAL.items():
        entry = registry.get(model_id)
        assert (entry.pipeline, entry.source, entry.defaults.steps, entry.defaults.guidance_scale) == (
            family, f"hub:{model_id}", steps, guidance)
        assert "Licence:" in entry.description, model_id


def test_real_ids_without_weights_say_how_to_get_them(registry):
    entry = registry.get("black-forest-labs/FLUX.1-schnell")
    reason = entry.unavailable_reason()
    assert reason and "hf download black-forest-labs/FLUX.1-schnell" in reason
    with pytest.raises(ModelUnavailable) as info:
        entry.local_path()
    assert info.value.status == 503


def test_what_each_edit_is_comes_from_the_family_unless_the_entry_says(registry):
    assert registry.get("builtin/tiny-flux").edit_traits.kind == "strength"
    kontext = registry.get("black-forest-labs/FLUX.1-Kontext-dev").edit_traits
    assert (kontext.kind, kontext.max_images, kontext.pipeline) == ("reference", 1, "FluxKontextPipeline")
    single = registry.get("Qwen/Qwen-Image-Edit").edit_traits
    plus = registry.get("Qwen/Qwen-Image-Edit-2509").edit_traits
    assert (single.max_images, single.pipeline) == (1, "QwenImageEditPipeline")
    assert (plus.max_images, plus.pipeline) == (3, "QwenImageEditPlusPipeline")


@pytest.mark.parametrize("edits, message", [
    ({"kind": "strength"}, "edits.kind must be 'reference'"),
    ({"kind": "reference", "pipeline": "FluxPipeline"}, "edits.pipeline must be one of QwenImageEditPipeline, "
                                                        "QwenImageEditPlusPipeline"),
    ({"kind": "reference", "max_images": 3}, "edits.max_images must be at most 1 for QwenImageEditPipeline; got 3"),
])
def test_an_edits_field_that_does_not_fit_the_family_is_refused_naming_it(tmp_path, edits, message):
    raw = json.loads(DEFAULT_REGISTRY.read_text())  # the shipped file, one entry changed
    entry = next(m for m in raw["models"] if m["id"] == "builtin/tiny-qwen-image-edit")
    entry["edits"] = edits
    path = tmp_path / "models.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(RegistryError) as info:
        load_registry_file(path)
    assert "builtin/tiny-qwen-image-edit" in str(info.value) and message in str(info.value)


def test_sizes_must_fit_the_family(registry):
    entry = registry.get("builtin/tiny-flux")
    with pytest.raises(InvalidRequest) as info:
        to_engine(GenerateRequest(prompt="x", width=72), entry, seed=1)
    assert info.value.param == "width" and "multiple of 16" in info.value.message and "72" in info.value.message
    assert to_engine(GenerateRequest(prompt="x", width=80), entry, seed=1).width == 80
    assert to_engine(GenerateRequest(prompt="x", width=72), registry.get("builtin/tiny-sd"), seed=1).width == 72


def test_a_reference_edit_model_refuses_strength_and_masks_naming_the_field(registry):
    kontext = registry.get("builtin/tiny-flux-kontext")
    with pytest.raises(InvalidRequest) as info:
        to_engine(EditRequest(prompt="make it blue", strength=0.5), kontext, seed=1, mode="edit")
    assert info.value.param == "strength" and "builtin/tiny-flux-kontext" in info.value.message
    with pytest.raises(InvalidRequest) as info:
        to_engine(EditRequest(prompt="make it blue"), kontext, seed=1, mode="inpaint")
    assert info.value.param == "mask"
    item = to_engine(EditRequest(prompt="make it blue"), kontext, seed=1, mode="edit")
    assert (item.strength, item.reference_batching, item.row_guidance) == (None, "row", True)


def test_more_images_than_the_model_takes_are_refused_naming_the_model_and_its_limit(registry):
    for model_id, limit in (("builtin/tiny-flux-kontext", 1), ("builtin/tiny-flux", 1),
                            ("builtin/tiny-qwen-image-edit", 3), ("builtin/tiny-flux2-klein", 4)):
        entry = registry.get(model_id)
        assert to_engine(EditRequest(prompt="x"), entry, seed=1, mode="edit", images=limit).mode == "edit"
        with pytest.raises(InvalidRequest) as info:
            to_engine(EditRequest(prompt="x"), entry, seed=1, mode="edit", images=limit + 1)
        assert info.value.param == "image"
        assert f"model {model_id!r} takes at most {limit} input image" in info.value.message
        assert f"got {limit + 1}" in info.value.message


def test_batch_keys_follow_how_the_pipeline_takes_its_references(registry):
    from t2i_core.common.schemas import InputImage

    def edit(model_id: str, prompt: str, pixels: bytes, guidance: float = 2.0):
        item = to_engine(EditRequest(prompt=prompt, guidance_scale=guidance), registry.get(model_id), seed=1,
                         mode="edit")
        return item.model_copy(update={"references": [InputImage(width=64, height=64, pixels=pixels)]})

    a, b = bytes(64 * 64 * 3), bytes([1]) * (64 * 64 * 3)
    # Kontext: one image per row, and the distilled guidance per row: different images, prompts and
    # guidance batch together
    assert edit("builtin/tiny-flux-kontext", "x", a).batch_key() == edit("builtin/tiny-flux-kontext", "y", b, 5.0).batch_key()
    # klein: one list for the call: the same images only
    klein = "builtin/tiny-flux2-klein"
    assert edit(klein, "x", a).batch_key() == edit(klein, "y", a).batch_key() != edit(klein, "x", b).batch_key()
    # Qwen-Image-Edit Plus: one prompt and its images per call
    plus = "builtin/tiny-qwen-image-edit"
    assert edit(plus, "x", a).batch_key() == edit(plus, "x", a).batch_key() != edit(plus, "y", a).batch_key()
    # guidance stays in the key where the model does not take it per row
    z = registry.get("builtin/tiny-z-image")
    assert (to_engine(GenerateRequest(prompt="x", guidance_scale=1), z, seed=1).batch_key()
            != to_engine(GenerateRequest(prompt="x", guidance_scale=2), z, seed=1).batch_key())
