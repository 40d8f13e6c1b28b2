"""Quantized components (t2i_core/weights/quantize.py, gguf_writer.py): the registry spec, the real
bytes, GGUF files, LoRA adapters on quantized models, and quality against the same model unquantized.

Quality is the relative L2 error ``|out_q - out| / |out|`` of an output (a denoiser's prediction, or a
whole 64 px image) against the unquantized model's on the same inputs, computed in float32 (the CPU
dtype). Each bound is about three times the largest error measured on the tiny models and on
width-reduced (256 wide) deeper ones, and sits at the per-weight error of the format itself: float8
e4m3 rounds a weight by ~2.7% RMS (3 mantissa bits), int8 per row and Q8_0 per 32 by ~0.5-0.8%, Q4_K
by ~8%. What the bounds catch are the real failures: a wrong block layout or scale, a tensor loaded
under the wrong name or left at its random initialisation, a layer computing in the wrong dtype; those
give errors of order 1 (two unrelated random models differ by ~1.4). Random weights understate one real
risk: diffusers' fp8 is a plain cast without a scale, and weights under ~0.01 fall into float8's
subnormals (9% error at std 0.005); the 256-wide models' weights (uniform within 1/16) do not.
"""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

import pytest

from t2i_core.common.errors import ModelUnavailable
from t2i_core.weights.quantize import (
    QuantizationError,
    apply_quantization,
    component_bytes,
    parse_quantization,
    unavailable_reason,
)

#: relative L2 error bounds of an output against the unquantized model's (see the module docstring);
#: measured maxima: fp8 0.025, int8 0.006, Q8_0 0.005, Q4_K 0.069
REL_ERR = {"fp8": 0.08, "int8": 0.02, "Q8_0": 0.02, "Q4_K": 0.2}
PROMPT = "a photo of a cat"


def rel_err(out, ref) -> float:
    return float((out.float() - ref.float()).norm() / ref.float().norm())


# -- the spec ------------------------------------------------------------------------------------------


def test_spec_reads_methods_per_component():
    spec = parse_quantization({
        "transformer": {"method": "gguf", "file": "hub:city96/FLUX.1-dev-gguf/flux1-dev-Q4_K_S.gguf"},
        "text_encoder_2": "int8", "text_encoder": {"method": "fp8"}, "unet": "nf4",
    })
    assert spec.describe() == {"transformer": "gguf", "text_encoder_2": "int8", "text_encoder": "fp8", "unet": "nf4"}
    assert spec.components["transformer"].file == "hub:city96/FLUX.1-dev-gguf/flux1-dev-Q4_K_S.gguf"
    assert spec.method("text_encoder_3") is None
    assert not parse_quantization(None) and not parse_quantization({})


@pytest.mark.parametrize("raw, names", [
    ({"vae": "fp8"}, ["quantization", "'vae'"]),
    ({"transformer": "fp4"}, ["quantization.transformer.method", "'fp4'", "fp8, int8, gguf, nf4"]),
    ({"transformer": 8}, ["quantization.transformer", "8"]),
    ({"text_encoder_3": {"method": "gguf", "file": "t5.gguf"}}, ["quantization.text_encoder_3.method", "'text_encoder_3'"]),
    ({"transformer": "gguf"}, ["quantization.transformer.file", "None"]),
    ({"transformer": {"method": "gguf", "file": "flux.safetensors"}}, ["quantization.transformer.file", "'flux.safetensors'"]),
    ({"transformer": {"method": "gguf", "file": "hub:city96/flux.gguf"}}, ["quantization.transformer.file", "'hub:city96/flux.gguf'"]),
    ({"transformer": {"method": "fp8", "file": "x.gguf"}}, ["quantization.transformer.file", "'fp8'", "'x.gguf'"]),
    ({"transformer": {"method": "fp8", "bits": 8}}, ["quantization.transformer", "bits"]),
    (["fp8"], ["quantization", "['fp8']"]),
])
def test_spec_errors_name_the_field_and_the_value(raw, names):
    with pytest.raises(QuantizationError) as caught:
        parse_quantization(raw)
    for name in names:
        assert name in str(caught.value)


def test_nf4_is_refused_without_cuda_before_anything_changes(tiny_sd3):
    """nf4 is bitsandbytes on CUDA: on the CPU the load fails with the reason, the other components
    of the spec untouched (all are checked before any is quantized)."""
    from diffusers import StableDiffusion3Pipeline

    spec = parse_quantization({"text_encoder": "fp8", "transformer": "nf4"})
    assert "needs a CUDA GPU" in unavailable_reason(spec, "cpu")
    assert "quantization.transformer" in unavailable_reason(spec, "cpu")
    assert "Apple MPS" in unavailable_reason(parse_quantization({"transformer": "fp8"}), "mps")
    assert unavailable_reason(parse_quantization({"transformer": "fp8", "text_encoder": "int8"}), "cpu") is None
    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_sd3, local_files_only=True)
    before = component_bytes(pipe.text_encoder)
    with pytest.raises(ModelUnavailable, match="nf4 .bitsandbytes. needs a CUDA GPU"):
        apply_quantization(pipe, spec, "cpu")
    assert component_bytes(pipe.text_encoder) == before


def test_nf4_load_time_config_picks_each_library():
    pytest.importorskip("bitsandbytes")
    import diffusers
    import torch
    import transformers

    from t2i_core.weights.quantize import load_time_config

    spec = parse_quantization({"transformer": "nf4", "text_encoder_2": "nf4", "text_encoder": "fp8"})
    config = load_time_config(spec, {"transformer": "diffusers", "text_encoder_2": "transformers"}, torch.bfloat16)
    assert set(config.quant_mapping) == {"transformer", "text_encoder_2"}
    assert isinstance(config.quant_mapping["transformer"], diffusers.BitsAndBytesConfig)
    assert isinstance(config.quant_mapping["text_encoder_2"], transformers.BitsAndBytesConfig)
    assert config.quant_mapping["transformer"].bnb_4bit_quant_type == "nf4"
    assert load_time_config(parse_quantization({"transformer": "fp8"}), {}, torch.bfloat16) is None


# -- bytes ---------------------------------------------------------------------------------------------


def test_bytes_are_the_storage_of_each_form():
    """float32 4 bytes a value; fp8 1 (weight and bias); torchao int8: the int8 data plus a float32
    scale and an int8 zero point per row, the float32 bias as is; not the 4 bytes a value that the
    torchao tensor's (float32) dtype would suggest."""
    import torch

    def linear():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(256, 512))

    rows, cols = 512, 256
    plain = linear()
    assert component_bytes(plain) == (rows * cols + rows) * 4
    fp8 = linear()
    apply_quantization({"transformer": fp8}, parse_quantization({"transformer": "fp8"}), "cpu")
    assert fp8[0].weight.dtype == torch.float8_e4m3fn
    assert component_bytes(fp8) == rows * cols + rows
    int8 = linear()
    apply_quantization({"transformer": int8}, parse_quantization({"transformer": "int8"}), "cpu")
    assert int8[0].weight.dtype == torch.float32  # the subclass reports its original dtype
    assert component_bytes(int8) == rows * cols + rows * (4 + 1) + rows * 4


def test_tied_weights_count_once(tiny_sd3):
    from transformers import T5EncoderModel

    t5 = T5EncoderModel.from_pretrained(Path(tiny_sd3) / "text_encoder_3", local_files_only=True)
    assert t5.shared.weight is t5.encoder.embed_tokens.weight
    assert component_bytes(t5) == sum(p.numel() * 4 for p in t5.parameters())  # parameters() dedupes


# -- the tiny SD3 pipeline, end to end -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_sd3(tmp_path_factory):
    from t2i_core.devtools.tiny import build_tiny_pipeline

    return str(build_tiny_pipeline("sd3", tmp_path_factory.mktemp("quant") / "sd3"))


def _load(folder: str, **components):
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(folder, local_files_only=True, **components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _image(pipe):
    import torch

    return pipe(PROMPT, num_inference_steps=2, height=64, width=64, output_type="pt",
                generator=torch.Generator().manual_seed(0)).images


@pytest.fixture(scope="module")
def tiny_sd3_image(tiny_sd3):
    pipe = _load(tiny_sd3)
    return _image(pipe), apply_quantization(pipe, parse_quantization({}), "cpu")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fp8", "int8"])
def test_tiny_sd3_pipeline_quantized_whole(tiny_sd3, tiny_sd3_image, method):
    """The transformer and the three text encoders (two CLIP, one T5) quantized: each smaller, the
    64 px image within the bound, the components still reporting the dtype they compute in."""
    import torch

    ref, ref_bytes = tiny_sd3_image
    names = ["transformer", "text_encoder", "text_encoder_2", "text_encoder_3"]
    pipe = _load(tiny_sd3)
    sizes = apply_quantization(pipe, parse_quantization({n: method for n in names}), "cpu")
    for name in names:
        assert sizes[name] < ref_bytes[name], name
        assert getattr(pipe, name).dtype == torch.float32, name
    assert sizes["vae"] == ref_bytes["vae"]
    assert rel_err(_image(pipe), ref) < REL_ERR[method]


@pytest.mark.slow
def test_tiny_sd3_pipeline_with_a_gguf_transformer(tiny_sd3, tiny_sd3_image, tmp_path):
    """A Q8_0 GGUF file written from the pipeline's transformer, loaded by diffusers' from_single_file
    into the pipeline: counted by its packed bytes, the image within the bound."""
    import torch
    from diffusers import SD3Transformer2DModel

    from t2i_core.weights.gguf_writer import write_gguf
    from t2i_core.weights.quantize import load_gguf_transformer

    ref, ref_bytes = tiny_sd3_image
    original = SD3Transformer2DModel.from_pretrained(tiny_sd3, subfolder="transformer", local_files_only=True)
    written = write_gguf(original, tmp_path / "sd3-Q8_0.gguf", "Q8_0")
    assert Counter(written.values())["Q8_0"] == sum(1 for m in original.modules() if isinstance(m, torch.nn.Linear))
    spec = parse_quantization({"transformer": {"method": "gguf", "file": str(tmp_path / "sd3-Q8_0.gguf")}})
    transformer = load_gguf_transformer(spec.components["transformer"].file, SD3Transformer2DModel,
                                        tiny_sd3, torch.float32, subfolder="transformer")
    pipe = _load(tiny_sd3, transformer=transformer)
    sizes = apply_quantization(pipe, spec, "cpu")
    assert sizes["transformer"] < ref_bytes["transformer"]
    assert rel_err(_image(pipe), ref) < REL_ERR["Q8_0"]
    with pytest.raises(ModelUnavailable, match="gguf is applied while loading"):  # gguf on a plain model
        apply_quantization(_load(tiny_sd3), spec, "cpu")


# -- LoRA adapters on quantized models -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_sd3_loras(tiny_sd3, tmp_path_factory):
    """Two random rank-4 LoRAs on the tiny SD3 transformer's attention, in diffusers' file format."""
    import torch
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    files = {}
    for seed, name in enumerate(("ink", "oil"), start=1):
        transformer = SD3Transformer2DModel.from_pretrained(tiny_sd3, subfolder="transformer", local_files_only=True)
        torch.manual_seed(seed)
        transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                           target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
        folder = tmp_path_factory.mktemp(f"lora-{name}")
        StableDiffusion3Pipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(transformer),
                                                   weight_name="lora.safetensors")
        files[name] = str(folder / "lora.safetensors")
    return files


def _adapter_images(pipe, loras) -> dict[str, object]:
    """Images with no adapter, ink, oil, ink again and none again, switched as the engine does."""
    from t2i_core.engine.controls import AdapterSlots

    slots = AdapterSlots()
    for name, path in loras.items():
        slots.load(pipe, name, path, None)
    images = {}
    for key, active in [("none", []), ("ink", [("ink", 1.0)]), ("oil", [("oil", 1.0)]),
                        ("ink again", [("ink", 1.0)]), ("none again", [])]:
        slots.activate(pipe, active)
        images[key] = _image(pipe)
    return images


@pytest.fixture(scope="module")
def tiny_sd3_adapter_images(tiny_sd3, tiny_sd3_loras):
    return _adapter_images(_load(tiny_sd3), tiny_sd3_loras)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fp8", "int8"])
def test_lora_adapters_load_and_switch_on_a_quantized_transformer(tiny_sd3, tiny_sd3_loras,
                                                                  tiny_sd3_adapter_images, method):
    """Each adapter's image is within the bound of the unquantized model's with the same adapter,
    differs from the others by more than that, and switching back gives the same image again."""
    import torch

    ref = tiny_sd3_adapter_images
    pipe = _load(tiny_sd3)
    apply_quantization(pipe, parse_quantization({"transformer": method}), "cpu")
    images = _adapter_images(pipe, tiny_sd3_loras)
    for key in ref:
        assert rel_err(images[key], ref[key]) < REL_ERR[method], key
    assert rel_err(images["ink"], images["none"]) > 2 * rel_err(images["ink"], ref["ink"])
    assert rel_err(images["ink"], images["oil"]) > 2 * rel_err(images["ink"], ref["ink"])
    assert torch.equal(images["ink again"], images["ink"])
    assert torch.equal(images["none again"], images["none"])
    layer = pipe.transformer.transformer_blocks[0].attn.to_q
    assert all(a.weight.dtype == torch.float32 for a in layer.lora_A.values())  # not float8


# -- width-reduced, deeper denoisers -------------------------------------------------------------------


def _sd3(width: int = 256, layers: int = 4):
    import torch
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(0)
    model = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=16, num_layers=layers, attention_head_dim=64,
                                  num_attention_heads=width // 64, joint_attention_dim=width, caption_projection_dim=width,
                                  pooled_projection_dim=width, out_channels=16, pos_embed_max_size=16)
    g = torch.Generator().manual_seed(1)
    inputs = dict(hidden_states=torch.randn(1, 16, 16, 16, generator=g), encoder_hidden_states=torch.randn(1, 32, width, generator=g),
                  pooled_projections=torch.randn(1, width, generator=g), timestep=torch.tensor([500.0]))
    return model, inputs


def _flux(width: int = 256, layers: int = 2):
    import torch
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    model = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=layers, num_single_layers=2 * layers,
                                   attention_head_dim=64, num_attention_heads=width // 64, joint_attention_dim=width,
                                   pooled_projection_dim=width, axes_dims_rope=(16, 24, 24))
    g = torch.Generator().manual_seed(1)
    inputs = dict(hidden_states=torch.randn(1, 64, 64, generator=g), encoder_hidden_states=torch.randn(1, 32, width, generator=g),
                  pooled_projections=torch.randn(1, width, generator=g), timestep=torch.tensor([0.5]),
                  img_ids=torch.zeros(64, 3), txt_ids=torch.zeros(32, 3))
    return model, inputs


@pytest.fixture(scope="module", params=["sd3", "flux"])
def wide_denoiser(request, tmp_path_factory):
    """A 256-wide denoiser (SD3: 4 joint blocks; FLUX: 2 double and 4 single blocks), saved, with its
    output on fixed inputs."""
    import torch

    model, inputs = (_sd3 if request.param == "sd3" else _flux)()
    folder = tmp_path_factory.mktemp(f"wide-{request.param}")
    model.save_pretrained(folder)
    with torch.inference_mode():
        out = model(**inputs).sample
    return model, inputs, folder, out


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fp8", "int8", "Q8_0", "Q4_K"])
def test_wide_denoiser_quantized_within_bound(wide_denoiser, method):
    import torch

    from t2i_core.weights.gguf_writer import write_gguf
    from t2i_core.weights.quantize import load_gguf_transformer

    model, inputs, folder, ref = wide_denoiser
    if method in ("fp8", "int8"):
        quantized = copy.deepcopy(model)
        apply_quantization({"transformer": quantized}, parse_quantization({"transformer": method}), "cpu")
    else:
        written = write_gguf(model, folder / f"{method}.gguf", method)
        linears = sum(1 for m in model.modules() if isinstance(m, torch.nn.Linear))
        assert Counter(written.values())[method] >= linears - 1  # FLUX's x_embedder (64 in) is Q8_0 under Q4_K
        quantized = load_gguf_transformer(folder / f"{method}.gguf", type(model), folder, torch.float32)
    with torch.inference_mode():
        out = quantized(**inputs).sample
    assert component_bytes(quantized) < component_bytes(model) * {"fp8": 0.55, "int8": 0.3, "Q8_0": 0.3, "Q4_K": 0.16}[method]
    assert rel_err(out, ref) < REL_ERR[method]


# -- GGUF files ----------------------------------------------------------------------------------------


def test_q4_k_blocks_decode_with_the_reference_dequantizer():
    """The Q4_K writer against gguf-py's own (numpy) decoder: the layout is right when every value
    comes back within half a quantization step of its sub-block (plus the 6-bit scale rounding)."""
    import gguf
    import numpy as np

    from t2i_core.weights.gguf_writer import quantize_q4_k

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal((8, 512)) * 0.02, rng.uniform(0.5, 1.0, (8, 512)),
                        np.zeros((1, 512))]).astype(np.float32)
    blocks = quantize_q4_k(x)
    assert blocks.shape == (17, 2 * 144) and blocks.dtype == np.uint8
    back = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q4_K)
    sub = x.reshape(-1, 32)
    step = (sub.max(1) - np.minimum(sub.min(1), 0)) / 15
    assert np.all(np.abs(back - x).reshape(-1, 32).max(1) <= step * 0.6 + 1e-6)
    assert rel_err_np(back[:8], x[:8]) < 0.09 and not back[16].any()


def rel_err_np(a, b) -> float:
    import numpy as np

    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_gguf_hub_file_comes_from_the_cache_only(tmp_path):
    from huggingface_hub import constants

    from t2i_core.weights.quantize import resolve_gguf_file

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = Path(constants.HF_HUB_CACHE) / "models--t2i-test--tiny-gguf"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    file = repo / "snapshots" / commit / "q8" / "tiny-Q8_0.gguf"
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(b"GGUF")
    assert Path(resolve_gguf_file("hub:t2i-test/tiny-gguf/q8/tiny-Q8_0.gguf")) == file
    with pytest.raises(ModelUnavailable, match="not in the Hugging Face cache"):
        resolve_gguf_file("hub:t2i-test/tiny-gguf/tiny-Q4_K.gguf")
    with pytest.raises(ModelUnavailable, match="not found"):
        resolve_gguf_file(str(tmp_path / "absent.gguf"))
