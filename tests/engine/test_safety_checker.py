"""The safety checker's verdict reaches the client: a flagged image is an error naming the reason
(400 content_policy_violation, as OpenAI answers), never a black image with 200."""

from __future__ import annotations

import asyncio

import pytest
import torch

from t2i_core.api.engine_client import LocalEngineClient
from t2i_core.api.request_flow import RequestFlow
from t2i_core.common.config import Settings
from t2i_core.common.errors import ContentFiltered, http_status
from t2i_core.common.registry import TINY_SD_ID, Registry
from t2i_core.common.schemas import EngineRequest, GenerateRequest
from t2i_core.engine.core import Engine


def tiny_safety_checker(flags: bool, dtype: torch.dtype):
    """diffusers' StableDiffusionSafetyChecker at toy size, with thresholds that flag every image
    (``flags``) or none: random weights, so the verdict is set by the thresholds alone."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2},
        vision_config={"hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=8,
    )
    checker = StableDiffusionSafetyChecker(config).eval().to(dtype)
    with torch.no_grad():  # cosine distances lie in [-1, 1]: a threshold of -2 flags all, 2 none
        checker.concept_embeds_weights.fill_(-2.0 if flags else 2.0)
        checker.special_care_embeds_weights.fill_(2.0)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return checker, processor


@pytest.fixture()
def checked_engine(engine):
    def make(flags: bool) -> Engine:
        fresh = Engine(Settings(), registry=Registry(default=TINY_SD_ID))
        with fresh.models.use(TINY_SD_ID) as loaded:
            pipe = loaded.pipeline("generate", None)
            checker, processor = tiny_safety_checker(flags, pipe.unet.dtype)
            pipe.safety_checker, pipe.feature_extractor = checker, processor
        return fresh

    return make


def req(seed: int) -> EngineRequest:
    return EngineRequest(model=TINY_SD_ID, prompt="x", steps=1, guidance_scale=0.0, width=64, height=64, seed=seed)


def test_a_flagged_image_is_an_error_not_a_black_image(checked_engine):
    results = checked_engine(True).run([req(1), req(2)])
    assert all(r.pixels is None for r in results)
    assert [r.error["code"] for r in results] == ["content_policy_violation"] * 2
    assert "safety checker" in results[0].error["message"] and "seed 1" in results[0].error["message"]
    assert http_status(ContentFiltered("x")) == 400


def test_an_image_the_checker_passes_is_returned(checked_engine):
    (result,) = checked_engine(False).run([req(1)])
    assert result.error is None and result.pixels and any(result.pixels)


def test_the_client_gets_a_400_naming_the_reason(checked_engine):
    eng = checked_engine(True)
    flow = RequestFlow(LocalEngineClient(eng), Settings(encode_processes=0), eng.registry)
    with pytest.raises(ContentFiltered) as info:
        asyncio.run(flow.generate(GenerateRequest(prompt="x", width=64, height=64, num_inference_steps=1, seed=3)))
    assert info.value.code == "content_policy_violation" and info.value.param == "prompt"
    assert eng.stats()["errors_by_code"]["content_policy_violation"] == 1
