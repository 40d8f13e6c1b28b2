"""Generation parameters in the output file, in A1111's "parameters" format: a PNG text chunk, the
EXIF UserComment of JPEG and WebP; written by the encoder processes as in process; a setting turns it off."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from t2i_core.api.engine_client import LocalEngineClient
from t2i_core.api.request_flow import RequestFlow
from t2i_core.api.images.codecs import encode_image
from t2i_core.api.images.encode_pool import EncoderPool
from t2i_core.api.images.parameters import parameters_text
from t2i_core.common.config import Settings
from t2i_core.common.schemas import EditRequest, EngineRequest, GenerateRequest

TEXT = "a kite, ünïcødé ☃\nNegative prompt: blurry\nSteps: 2, Sampler: default, CFG scale: 0.0, Seed: 7, Size: 16x16, Model: m"


def read_parameters(data: bytes) -> str | None:
    img = Image.open(io.BytesIO(data))
    if img.format == "PNG":
        return img.text.get("parameters")
    comment = img.getexif().get_ifd(0x8769).get(0x9286)
    return comment[8:].decode("utf-16-be") if comment and comment.startswith(b"UNICODE\0") else None


def test_the_text_reads_as_a1111_writes_it():
    item = EngineRequest(model="stabilityai/sd-turbo", prompt="a lighthouse", negative_prompt="blurry", steps=4,
                         guidance_scale=0.0, width=512, height=512, scheduler="euler_a", strength=0.5, seed=7)
    assert parameters_text(item) == ("a lighthouse\nNegative prompt: blurry\nSteps: 4, Sampler: euler_a, CFG scale: 0.0, "
                                        "Seed: 7, Size: 512x512, Model: stabilityai/sd-turbo, Denoising strength: 0.5")
    plain = item.model_copy(update={"negative_prompt": "", "scheduler": None, "strength": None, "seed": 1})
    assert parameters_text(plain).splitlines() == [
        "a lighthouse", "Steps: 4, Sampler: default, CFG scale: 0.0, Seed: 1, Size: 512x512, Model: stabilityai/sd-turbo"]


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
@pytest.mark.parametrize("text", [TEXT, "latin-1 only: café"])
def test_every_format_carries_the_parameters_and_the_same_pixels(fmt, text):
    pixels = np.random.default_rng(0).integers(0, 256, 16 * 16 * 3, dtype=np.uint8).tobytes()
    with_text, without = encode_image(pixels, 16, 16, fmt, text), encode_image(pixels, 16, 16, fmt)
    assert read_parameters(with_text) == text and read_parameters(without) is None
    assert Image.open(io.BytesIO(with_text)).tobytes() == Image.open(io.BytesIO(without)).tobytes()


def test_encoder_processes_write_the_same_file():
    pixels = bytes(range(256)) * 3 * 4  # 32x32 RGB

    async def encode() -> bytes:
        pool = EncoderPool(1)
        try:
            data, _ = await pool.encode(pixels, 32, 32, "png", TEXT)
            assert pool.fallbacks == 0
            return data
        finally:
            pool.close()

    assert asyncio.run(encode()) == encode_image(pixels, 32, 32, "png", TEXT)


@pytest.mark.parametrize("on", [1, 0])
def test_served_images_carry_their_own_parameters_unless_turned_off(engine, on):
    flow = RequestFlow(LocalEngineClient(engine), Settings(encode_processes=0, image_parameters=on), engine.registry)

    async def run():
        made = await flow.generate(GenerateRequest(prompt="a red kite", negative_prompt="fog", seed=11,
                                                    num_inference_steps=1, width=64, height=64), n=2)
        edited = await flow.edit(EditRequest(prompt="at night", strength=0.5, seed=3, format="jpeg"), made[0].data)
        return made, edited

    made, (edited,) = asyncio.run(run())
    if not on:
        assert read_parameters(made[0].data) is None and read_parameters(edited.data) is None
        return
    first, second = (read_parameters(image.data) for image in made)
    assert first.startswith("a red kite\nNegative prompt: fog\nSteps: 1, ") and "Seed: 11," in first
    assert "Seed: 12," in second and f"Model: {made[0].model}" in second and "Size: 64x64" in second
    assert "Denoising strength: 0.5" in read_parameters(edited.data) and "Seed: 3," in read_parameters(edited.data)


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_output_quality_sets_the_jpeg_and_webp_quality_in_process_and_in_the_encoders(fmt):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, 64 * 64 * 3, dtype=np.uint8).tobytes()
    low, default = encode_image(pixels, 64, 64, fmt, quality=20), encode_image(pixels, 64, 64, fmt)
    assert len(low) < len(default)

    async def encode() -> bytes:
        pool = EncoderPool(1)
        try:
            data, _ = await pool.encode(pixels, 64, 64, fmt, "", 20)
            assert pool.fallbacks == 0
            return data
        finally:
            pool.close()

    assert asyncio.run(encode()) == low
