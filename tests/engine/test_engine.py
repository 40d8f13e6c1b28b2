"""The engine on the tiny model: per-item seeds, batch invariance, grouping, edit, per-item errors."""

from __future__ import annotations

import numpy as np
import pytest

from t2i_core.common.config import Settings
from t2i_core.engine.core import Engine
from t2i_core.common.registry import TINY_SD_ID
from t2i_core.common.schemas import EngineRequest


def req(prompt="a lighthouse", seed=1, **kw) -> EngineRequest:
    base = dict(model=TINY_SD_ID, prompt=prompt, steps=2, guidance_scale=5.0, width=64, height=64, seed=seed)
    return EngineRequest(**{**base, **kw})


def pixels(result) -> np.ndarray:
    assert result.error is None, result.error
    return np.frombuffer(result.pixels, np.uint8).reshape(result.height, result.width, 3)


def test_same_seed_same_pixels_different_seed_different(engine):
    a, b, c = engine.run([req(seed=5)]), engine.run([req(seed=5)]), engine.run([req(seed=6)])
    assert np.array_equal(pixels(a[0]), pixels(b[0]))
    assert not np.array_equal(pixels(a[0]), pixels(c[0]))


def test_batch_invariance_bit_exact(engine):
    alone = engine.run([req(seed=42)])[0]
    others = [req(prompt=f"other {i}", seed=100 + i) for i in range(15)]
    batch = engine.run(others[:7] + [req(seed=42)] + others[7:])
    assert batch[7].batch_size == 16
    assert np.array_equal(pixels(alone), pixels(batch[7]))
    # and each item depends on its own seed: all 16 differ
    assert len({r.pixels for r in batch}) == 16


def test_fp32_batch_difference_is_bounded():
    """fp32 CPU kernels change summation order with batch size; the effect stays within 1 level."""
    fp32 = Engine(Settings(dtype="float32"))
    alone = pixels(fp32.run([req(seed=42)])[0]).astype(int)
    batch = fp32.run([req(prompt=f"o{i}", seed=i) for i in range(7)] + [req(seed=42)])
    assert np.abs(alone - pixels(batch[7]).astype(int)).max() <= 1


def test_the_engine_takes_only_requests_whose_seed_is_decided():
    import pydantic

    with pytest.raises(pydantic.ValidationError, match="seed"):
        req(seed=None)


def test_a_missing_seed_is_drawn_once_by_the_api_and_returned(engine):
    """The request flow draws it (the only place a seed is drawn); n images take seed, seed + 1, ..."""
    import asyncio

    from t2i_core.api.engine_client import LocalEngineClient
    from t2i_core.api.request_flow import RequestFlow
    from t2i_core.common.config import Settings
    from t2i_core.common.schemas import GenerateRequest

    flow = RequestFlow(LocalEngineClient(engine), Settings(encode_processes=0), engine.registry)
    ask = GenerateRequest(prompt="a kite", width=64, height=64, num_inference_steps=1)
    first, second = asyncio.run(flow.generate(ask, n=2))
    assert second.seed == first.seed + 1
    (again,) = asyncio.run(flow.generate(ask.model_copy(update={"seed": first.seed + 1})))
    assert again.data == second.data


def test_groups_compatible_settings_and_keeps_order(engine):
    items = [req(seed=1), req(seed=2, width=72), req(seed=3), req(seed=4, steps=3), req(seed=5, width=72)]
    out = engine.run(items)
    assert [r.seed for r in out] == [1, 2, 3, 4, 5]
    assert [r.batch_size for r in out] == [2, 2, 2, 1, 2]
    assert [(r.width, r.height) for r in out] == [(64, 64), (72, 64), (64, 64), (64, 64), (72, 64)]


def test_edit_shares_weights_and_uses_the_image(engine):
    loaded = engine.load(TINY_SD_ID)
    assert loaded.image2image.unet is loaded.text2image.unet
    assert loaded.image2image.vae is loaded.text2image.vae
    src = engine.run([req(seed=9)])[0].pixels
    gray = bytes([128]) * (64 * 64 * 3)
    edit = dict(mode="edit", strength=0.5, steps=2, seed=3)
    a, b = engine.run([req(image=src, **edit), req(image=gray, **edit)])
    assert a.error is None and b.error is None
    assert not np.array_equal(pixels(a), pixels(b))  # the input image matters
    assert np.array_equal(pixels(a), pixels(engine.run([req(image=src, **edit)])[0]))


def test_a_failing_item_does_not_fail_its_batch_mates(engine):
    out = engine.run([req(seed=1), req(seed=2, model="stabilityai/sd-turbo"), req(seed=3)])
    assert out[0].error is None and out[2].error is None
    assert out[1].error["code"] == "model_unavailable" and "sd-turbo" in out[1].error["message"]


def test_stats_count_batches(engine):
    before = engine.stats()["batches"]
    engine.run([req(seed=i) for i in range(3)])
    stats = engine.stats()
    assert stats["batches"] == before + 1 and stats["recent_batch_sizes"][-1] == 3


@pytest.mark.parametrize("cuda, bf16, mps, want", [
    (True, True, False, "bfloat16"), (True, False, False, "float16"), (False, False, True, "float16"),
    (False, False, False, "float32"),
])
def test_device_and_dtype_choice(monkeypatch, cuda, bf16, mps, want):
    import torch

    from t2i_core.engine.devices import pick_device, pick_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    device = pick_device("auto")
    assert device == ("cuda" if cuda else "mps" if mps else "cpu")
    assert pick_dtype("auto", device) == getattr(torch, want)
    assert pick_dtype("float16", device) == torch.float16  # the environment override wins
    assert pick_device("cpu") == "cpu"


def test_duplicate_prompts_are_encoded_once_and_images_stay_the_same(engine):
    from t2i_core.engine.core import prompt_arguments

    same = [req(seed=s) for s in (11, 12, 13, 14)]
    assert prompt_arguments(same) == {"prompt": ["a lighthouse"], "negative_prompt": [""], "num_images_per_prompt": 4}
    assert len(prompt_arguments(same[:3] + [req(prompt="other", seed=14)])["prompt"]) == 4
    assert "num_images_per_prompt" not in prompt_arguments([req(mode="edit", image=bytes(64 * 64 * 3), strength=0.5)] * 2)
    together = engine.run(same)
    assert [r.batch_size for r in together] == [4] * 4
    for request, result in zip(same, together):  # bit-exact with each image made alone (float64)
        assert np.array_equal(pixels(result), pixels(engine.run([request])[0]))
    assert len({r.pixels for r in together}) == 4
