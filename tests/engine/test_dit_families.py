"""The engine on the tiny DiT models (FLUX.1, Kontext, FLUX.2 klein, Qwen-Image, Qwen-Image-Edit,
Z-Image): each generates, batched and reproducibly; FLUX.1 edits by strength and inpaints; the edit
models read their input images as references, one per row (Kontext) or one list for the call (klein,
Qwen-Image-Edit Plus); partial images of packed latents; and what a request that does not fit the
model gets (before any image is decoded)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from t2i_core.common.config import Settings
from t2i_core.common.schemas import EditRequest, EngineRequest, GenerateRequest, InputImage, to_engine

TINY = ["builtin/tiny-flux", "builtin/tiny-flux-kontext", "builtin/tiny-flux2-klein", "builtin/tiny-qwen-image",
        "builtin/tiny-qwen-image-edit", "builtin/tiny-z-image"]


@pytest.fixture(scope="module")
def dit_engine():
    """One torch thread: the tiny DiTs run many small operators (two threads were slower here)."""
    from t2i_core.engine.core import Engine
    from t2i_core.patches.transformers import video_processor_optional

    video_processor_optional()  # what install_patches does in the server (Qwen-Image-Edit's processor)
    engine = Engine(Settings(torch_threads=1))
    yield engine
    engine.close()


def request(engine, model: str, mode: str = "generate", **fields) -> EngineRequest:
    """An EngineRequest as the API resolves it (``to_engine``), with ``fields`` on top."""
    entry = engine.registry.get(model)
    images = len(fields.get("references", [])) or 1
    req = (EditRequest if mode != "generate" else GenerateRequest)(prompt=fields.pop("prompt", "a red fox"), model=model)
    item = to_engine(req, entry, seed=fields.pop("seed", 1), mode=mode, registry=engine.registry, images=images)
    return item.model_copy(update=fields)


def pixels(result) -> np.ndarray:
    assert result.error is None, result.error
    return np.frombuffer(result.pixels, np.uint8).reshape(result.height, result.width, 3)


def picture(seed: int, width: int = 64, height: int = 64) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8).tobytes()


def reference(seed: int, width: int = 64, height: int = 64) -> InputImage:
    return InputImage(width=width, height=height, pixels=picture(seed, width, height))


@pytest.mark.parametrize("model", TINY)
def test_each_family_generates_batched_and_reproducibly(dit_engine, model):
    first = dit_engine.run([request(dit_engine, model, seed=7), request(dit_engine, model, seed=8, prompt="a cat")])
    assert [r.batch_size for r in first] == [2, 2]
    a, b = pixels(first[0]), pixels(first[1])
    assert a.shape == (64, 64, 3) and not np.array_equal(a, b)
    (alone,) = dit_engine.run([request(dit_engine, model, seed=7)])
    assert np.array_equal(pixels(alone), a)  # float64 tiny models: the batch changes no bit


def test_flux_edits_by_strength_and_inpaints(dit_engine):
    image = picture(1)
    mask = bytes([255]) * (64 * 32) + bytes(64 * 32)  # the top half is repainted
    edit = request(dit_engine, "builtin/tiny-flux", "edit", image=image, steps=4)
    assert edit.strength == 0.6
    out = dit_engine.run([edit, edit.model_copy(update={"image": picture(2)})])
    assert out[0].batch_size == 2 and not np.array_equal(pixels(out[0]), pixels(out[1]))
    inpaint = request(dit_engine, "builtin/tiny-flux", "inpaint", image=image, mask=mask)
    (result,) = dit_engine.run([inpaint])
    assert pixels(result).shape == (64, 64, 3)


def test_kontext_reads_one_reference_per_row_and_each_row_is_its_own(dit_engine):
    def edit(seed: int, ref: int, guidance: float) -> EngineRequest:
        return request(dit_engine, "builtin/tiny-flux-kontext", "edit", seed=seed, references=[reference(ref)],
                       guidance_scale=guidance)

    batch = dit_engine.run([edit(3, 1, 2.5), edit(3, 2, 4.0)])
    assert [r.batch_size for r in batch] == [2, 2]  # different images and guidance, one call
    for item, result in zip([edit(3, 1, 2.5), edit(3, 2, 4.0)], batch):
        (alone,) = dit_engine.run([item])
        assert np.array_equal(pixels(alone), pixels(result))
    assert not np.array_equal(pixels(batch[0]), pixels(batch[1]))


def test_klein_reads_every_reference_of_the_call(dit_engine):
    one = request(dit_engine, "builtin/tiny-flux2-klein", "edit", references=[reference(1)])
    two = request(dit_engine, "builtin/tiny-flux2-klein", "edit", references=[reference(1), reference(2, 80, 64)])
    out = dit_engine.run([one, two, two.model_copy(update={"seed": 2, "prompt": "a cat"})])
    assert [r.batch_size for r in out] == [1, 2, 2]  # same references, one call
    assert not np.array_equal(pixels(out[0]), pixels(out[1]))  # the second reference is read


@pytest.mark.slow
def test_qwen_image_edit_plus_reads_two_references():
    """Slow by the pipeline's design: it encodes each input image at about 1 MP, whatever its size."""
    from t2i_core.engine.core import Engine
    from t2i_core.patches.transformers import video_processor_optional

    video_processor_optional()
    engine = Engine(Settings(torch_threads=1))
    try:
        two = request(engine, "builtin/tiny-qwen-image-edit", "edit", references=[reference(1), reference(2)])
        out = engine.run([two, two.model_copy(update={"seed": 2})])
        assert [r.batch_size for r in out] == [2, 2]  # the n images of one prompt: one call
        assert not np.array_equal(pixels(out[0]), pixels(out[1]))
    finally:
        engine.close()


def test_partial_images_of_packed_latents(dit_engine):
    """FLUX packs its latents into 2x2 patches: the partial image unpacks them first."""
    item = request(dit_engine, "builtin/tiny-flux", steps=3, request_id="flux-preview", partial_images=1)
    (result,) = dit_engine.run([item])
    pixels(result)
    (preview,) = dit_engine.take_previews("flux-preview")
    assert (preview.step, preview.steps, preview.width, preview.height) == (2, 3, 64, 64)
    assert len(preview.pixels) == 64 * 64 * 3


def test_the_request_flow_sends_every_input_image_as_a_reference(dit_engine):
    """Through the API's flow: a klein edit with two uploaded images; the same to FLUX.1 (one image)
    and strength to Kontext are refused before anything is decoded."""
    import io

    from PIL import Image

    from t2i_core.api.engine_client import LocalEngineClient
    from t2i_core.api.request_flow import RequestFlow
    from t2i_core.common.errors import InvalidRequest

    def png(seed: int, size: tuple[int, int]) -> bytes:
        out = io.BytesIO()
        Image.fromarray(np.frombuffer(picture(seed, *size), np.uint8).reshape(size[1], size[0], 3)).save(out, "PNG")
        return out.getvalue()

    flow = RequestFlow(LocalEngineClient(dit_engine), Settings(encode_processes=0), dit_engine.registry)
    images = [png(1, (64, 64)), png(2, (100, 70))]
    prepared = asyncio.run(flow.prepare_edit(EditRequest(prompt="x", model="builtin/tiny-flux2-klein"), images))
    refs = prepared.first.references
    assert [(r.width, r.height) for r in refs] == [(64, 64), (96, 64)] and prepared.first.image is None
    (image,) = asyncio.run(flow.run(prepared))
    assert (image.width, image.height) == (64, 64)
    with pytest.raises(InvalidRequest, match="'builtin/tiny-flux' takes at most 1 input image per edit; got 2"):
        asyncio.run(flow.prepare_edit(EditRequest(prompt="x", model="builtin/tiny-flux"), images))
    with pytest.raises(InvalidRequest) as info:
        asyncio.run(flow.prepare_edit(EditRequest(prompt="x", model="builtin/tiny-flux-kontext", strength=0.5),
                                      images[:1]))
    assert info.value.param == "strength"
