"""Text encoders run once per distinct prompt of a batch, and nothing else changes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from t2i_core.engine.prompt_dedupe import dedupe_text_encoders, distinct_rows
from t2i_core.common.schemas import EngineRequest


def test_distinct_rows_in_first_seen_order():
    assert distinct_rows([(1,), (2,), (1,), (3,), (2,)]) == ([0, 1, 3], [0, 1, 0, 2, 1])
    assert distinct_rows([(5, 5)] * 3) == ([0], [0, 0, 0])


def _clip():
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=100, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=16, projection_dim=8,
                            bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return CLIPTextModelWithProjection(config).eval().double()


class _Holder:
    def __init__(self, encoder):
        self.text_encoder = encoder


def _rows_seen(model) -> list[int]:
    seen: list[int] = []
    model.get_input_embeddings().register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    return seen


def _tensors(output) -> list[torch.Tensor]:
    """Every tensor of an encoder output (ModelOutput or tuple, nested hidden states included)."""
    items = output.to_tuple() if hasattr(output, "to_tuple") else output
    flat: list[torch.Tensor] = []
    for item in items:
        flat.extend(item if isinstance(item, tuple) else (item,))
    return flat


#: float64 outputs of the same rows in batches of different shapes differ in the last bits on some
#: CPUs (AVX-512/AMX kernels pick other blockings per shape: ~6e-16 seen); far below what an image shows
BATCH_SHAPE_ATOL = 1e-12


def test_wrapped_encoder_gives_the_same_outputs_for_fewer_rows():
    """What the computation guarantees: the deduplicated call's rows are bit for bit the plain
    encoder's rows for the distinct prompts (the batch it really runs), and within float64 rounding
    of the plain encoder run on every row."""
    plain, wrapped = _clip(), _clip()
    assert dedupe_text_encoders(_Holder(wrapped)) == ["text_encoder"]
    assert dedupe_text_encoders(_Holder(wrapped)) == []  # once only
    seen = _rows_seen(wrapped)
    ids = torch.tensor([[1, 5, 7, 2], [1, 9, 2, 0], [1, 5, 7, 2], [1, 5, 7, 2], [1, 9, 2, 0]])
    first, inverse = [0, 1], torch.tensor([0, 1, 0, 0, 1])
    with torch.inference_mode():
        for kwargs in ({}, {"output_hidden_states": True}, {"return_dict": False, "output_hidden_states": True}):
            every_row, got = plain(ids, **kwargs), wrapped(ids, **kwargs)
            distinct = plain(ids[first], **kwargs)
            assert type(every_row) is type(got)
            assert seen[-1] == 2  # 2 distinct rows of 5
            assert len(_tensors(got)) == len(_tensors(every_row))
            for g, d, w in zip(_tensors(got), _tensors(distinct), _tensors(every_row)):
                assert g.shape == w.shape
                assert torch.equal(g, d[inverse])
                assert torch.allclose(g, w, rtol=0, atol=BATCH_SHAPE_ATOL)
        # the attention mask is part of a row: same ids with a different mask are two rows
        mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 0]])
        seen.clear()
        got = wrapped(ids, attention_mask=mask)
        assert seen == [3]
        rows, inverse = [0, 1, 2], torch.tensor([0, 1, 2, 0, 1])
        assert torch.equal(got.text_embeds, plain(ids[rows], attention_mask=mask[rows]).text_embeds[inverse])
        assert torch.allclose(got.text_embeds, plain(ids, attention_mask=mask).text_embeds, rtol=0, atol=BATCH_SHAPE_ATOL)


def test_calls_without_repeats_or_in_other_forms_pass_through():
    wrapped = _clip()
    dedupe_text_encoders(_Holder(wrapped))
    seen = _rows_seen(wrapped)
    with torch.inference_mode():
        wrapped(torch.tensor([[1, 5, 2], [1, 6, 2]]))  # no repeated row
        wrapped(torch.tensor([[1, 5, 2], [1, 5, 2]]), position_ids=torch.arange(3).unsqueeze(0))  # unknown keyword
        wrapped(input_ids=torch.tensor([[1, 5, 2], [1, 5, 2]]))  # keyword input_ids: deduplicated
    assert seen == [2, 2, 1]


def req(model, prompt, seed, negative=""):
    return EngineRequest(model=model, prompt=prompt, negative_prompt=negative, steps=2, guidance_scale=5.0,
                         width=64, height=64, seed=seed)


@pytest.mark.parametrize("model", ["builtin/tiny-sd", "builtin/tiny-sdxl"])
def test_engine_encodes_each_distinct_prompt_once_and_images_stay_bit_exact(engine, model):
    items = [req(model, "a", 1), req(model, "b", 2), req(model, "a", 3), req(model, "b", 4, negative="ugly"), req(model, "c", 5)]
    engine.run(items[:1])  # load
    with engine.models.use(model) as loaded:
        pipe = loaded.pipeline("generate", None)
    seen: dict[str, list[int]] = {}
    hooks = []
    for name in ("text_encoder", "text_encoder_2"):
        if getattr(pipe, name, None) is not None:
            rows = seen[name] = []
            hooks.append(getattr(pipe, name).get_input_embeddings().register_forward_pre_hook(
                lambda _m, args, rows=rows: rows.append(args[0].shape[0])))
    try:
        together = engine.run(items)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(seen) == (2 if model.endswith("sdxl") else 1)
    # 3 distinct prompts, then 2 distinct negative prompts ("" and "ugly"): 5 rows, not 10
    assert all(rows == [3, 2] for rows in seen.values()), seen
    for item, result in zip(items, together):  # float64: bit-exact with each image made alone
        assert result.error is None and result.batch_size == 5
        alone = engine.run([item])[0]
        assert np.array_equal(np.frombuffer(result.pixels, np.uint8), np.frombuffer(alone.pixels, np.uint8))
    assert len({r.pixels for r in together}) == 5


def test_sd3_runs_its_three_encoders_on_distinct_prompts_only(engine, monkeypatch):
    """SD3's two CLIP encoders and its T5 (256 tokens) all get the distinct rows only. (SD3's images are
    not bit-exact between a batch and a single image on CPU, with or without this; SD and SDXL are.)"""
    from t2i_core.engine import prompt_dedupe

    model = "builtin/tiny-sd3"
    items = [req(model, prompt, seed) for seed, prompt in enumerate("abab")]
    engine.run(items[:1])  # load
    seen: list[tuple[int, int, int]] = []
    real = prompt_dedupe.distinct_rows

    def spy(rows):
        keep, which = real(rows)
        seen.append((len(rows), len(keep), len(rows[0])))
        return keep, which

    monkeypatch.setattr(prompt_dedupe, "distinct_rows", spy)
    results = engine.run(items)
    assert all(r.error is None for r in results) and len({r.pixels for r in results}) == 4
    # prompts: CLIP, CLIP, T5 with 2 distinct of 4; then the negative prompts ("" for all) with 1
    assert seen == [(4, 2, 77), (4, 2, 77), (4, 2, 256), (4, 1, 77), (4, 1, 77), (4, 1, 256)]
