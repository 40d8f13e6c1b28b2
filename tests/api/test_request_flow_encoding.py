"""Where the API encodes images: a request's small images on the event loop, more pixels on worker threads."""

from __future__ import annotations

import asyncio
import io
import threading

import pytest
from PIL import Image

from t2i_core.api.images import codecs as imaging
from t2i_core.api.request_flow import INLINE_ENCODE_MAX_PIXELS, RequestFlow
from t2i_core.common.schemas import EngineRequest, EngineResult, GenerateRequest


class PixelEngine:
    """An engine client answering plain gray pixels of the requested size (this test is about the
    API's encoding, not about generating)."""

    async def run(self, kind: str, requests: list[EngineRequest]) -> list[EngineResult]:
        return [EngineResult(model=r.model, seed=r.seed, width=r.width, height=r.height,
                             pixels=bytes([128]) * (r.width * r.height * 3), batch_size=len(requests))
                for r in requests]


@pytest.mark.parametrize("side, n, on_loop", [(64, 1, True), (64, 2, True), (64, 3, False), (128, 1, False)])
def test_small_images_are_encoded_on_the_loop_and_large_ones_on_threads(monkeypatch, side, n, on_loop):
    assert (n * side * side <= INLINE_ENCODE_MAX_PIXELS) is on_loop
    threads: list[threading.Thread] = []
    encode = imaging.encode_image

    def recording_encode(*args, **kwargs):
        threads.append(threading.current_thread())
        return encode(*args, **kwargs)

    monkeypatch.setattr(imaging, "encode_image", recording_encode)
    flow = RequestFlow(PixelEngine())

    async def main():
        images = await flow.generate(GenerateRequest(prompt="x", width=side, height=side, seed=1), n=n)
        return images, threading.current_thread()

    images, loop_thread = asyncio.run(main())
    assert len(threads) == n and all((t is loop_thread) is on_loop for t in threads)
    for image in images:
        decoded = Image.open(io.BytesIO(image.data))
        assert decoded.format == "PNG" and decoded.size == (side, side)


def test_with_encoder_processes_no_image_is_encoded_in_the_api_process(monkeypatch):
    from t2i_core.common.config import Settings

    calls: list[int] = []
    encode = imaging.encode_image
    monkeypatch.setattr(imaging, "encode_image", lambda *a, **kw: calls.append(1) or encode(*a, **kw))
    flow = RequestFlow(PixelEngine(), Settings(encode_processes=1))

    async def main():
        try:
            return await flow.generate(GenerateRequest(prompt="x", width=96, height=64, seed=1, format="webp"), n=3)
        finally:
            flow.encoder.close()

    images = asyncio.run(main())
    assert calls == [] and flow.encoder.fallbacks == 0
    for image in images:
        decoded = Image.open(io.BytesIO(image.data))
        assert decoded.format == "WEBP" and decoded.size == (96, 64)
