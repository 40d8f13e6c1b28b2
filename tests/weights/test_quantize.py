"""Quantized components (t2i_core/weights/quantize.py, gguf_writer.py): the registry spec, the real
bytes, GGUF files, LoRA adapters on quantized models, and quality against the same model unquantized.

Quality is the relative L2 error ``|out_q - out| / |out|`` of an output (a denoiser's prediction, or a
whole 64 px image) against the unquantized model's on the same inputs, computed in float32 (the CPU
dtype). Each bound is 1.5 to 3 times the largest error measured on the tiny models and on width-reduced
(256 wide) deeper ones, and of the order of the format's own rounding of one weight: float8 e4m3 ~2.7%
RMS (3 mantissa bits), int8 per row and Q8_0 per 32 values ~0.5-0.8%, Q4_K ~8%. The failures they catch
are of order 1: a wrong block layout or scale, a tensor loaded under the wrong name or left at its random
initialisation, a layer computing in the wrong dtype (two unrelated random models differ by ~1.4). Random
weights understate one real risk: diffusers' fp8 is a plain cast without a scale, so weights under ~0.01
fall into float8's subnormals (11% error at std 0.005, 28% at 0.002), which the 256-wide models' weights
(uniform within 1/16) never reach; real checkpoints' weight magnitudes decide fp8's quality.
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
#: measured maxima: fp8 0.025 (0.052 on a tiny Qwen3 initialised at std 0.02), int8 0.006, Q8_0 0.006,
#: Q4_K 0.068
REL_ERR = {"fp8": 0.08, "int8": 0.02, "Q8_0": 0.02, "Q4_K": 0.2}
#: relative error bounds of one stored weight matrix against the original (measured maxima on the
#: 256-wide models: fp8 0.035, int8 0.004, Q8_0 0.004, Q4_K 0.061): these catch one wrong layer among
#: many, which moves a random-weight model's output too little to see (one transposed to_q: 0.3%)
PER_WEIGHT_ERR = {"fp8": 0.05, "int8": 0.01, "Q8_0": 0.01, "Q4_K": 0.1}
PROMPT = "a photo of a cat"


def rel_err(out, ref) -> float:
    out, ref = out.detach().float(), ref.detach().float()
    return float((out - ref).norm() / ref.norm())


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
    ({"text_encoder_3": {"method": "gguf", "file": "t5.gguf"}},
     ["quantization.text_encoder_3.method", "'text_encoder_3'"]),
    ({"transformer": "gguf"}, ["quantization.transformer.file", "None"]),
    ({"transformer": {"method": "gguf", "file": "flux.safetensors"}},
     ["quantization.transformer.file", "'flux.safetensors'"]),
    ({"transformer": {"method": "gguf", "file": "hub:city96/flux.gguf"}},
     ["quantization.transformer.file", "'hub:city96/flux.gguf'"]),
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


def test_fp8_keeps_tied_embeddings_out_of_float8():
    """A text encoder whose output layer shares the embedding table (Qwen3, as FLUX.2 klein's): casting
    the output layer would turn the table to float8 outside its forward, and the model's dtype with it."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                         tie_word_embeddings=True))
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.inference_mode():
        ref = model(ids, output_hidden_states=True).hidden_states[-1]
    quantized = copy.deepcopy(model)
    sizes = apply_quantization({"text_encoder": quantized}, parse_quantization({"text_encoder": "fp8"}), "cpu")
    assert quantized.lm_head.weight is quantized.model.embed_tokens.weight
    assert quantized.dtype == quantized.model.embed_tokens.weight.dtype == torch.float32
    assert sizes["text_encoder"] < component_bytes(model) / 2
    with torch.inference_mode():
        out = quantized(ids, output_hidden_states=True).hidden_states[-1]
    assert rel_err(out, ref) < REL_ERR["fp8"]


# -- the tiny SD3 pipeline, end to end -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_sd3(tmp_path_factory):
    from t2i_core.weights.tiny import build_tiny_pipeline

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
        layers = get_peft_model_state_dict(transformer)
        StableDiffusion3Pipeline.save_lora_weights(folder, transformer_lora_layers=layers, weight_name="lora.safetensors")
        files[name] = str(folder / "lora.safetensors")
    return files


def _adapter_images(pipe, loras) -> dict[str, object]:
    """Images with no adapter, ink, oil, ink again and none again, switched as the engine does."""
    from t2i_core.engine.lora import AdapterSlots

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
@pytest.mark.parametrize("method", ["fp8", "int8", "Q8_0"])
def test_lora_adapters_load_and_switch_on_a_quantized_transformer(tiny_sd3, tiny_sd3_loras,
                                                                  tiny_sd3_adapter_images, method, tmp_path):
    """Each adapter's image is within the bound of the unquantized model's with the same adapter,
    differs from the others by more than that, and switching back gives the same image again."""
    import torch

    ref = tiny_sd3_adapter_images
    if method == "Q8_0":
        from diffusers import SD3Transformer2DModel

        from t2i_core.weights.gguf_writer import write_gguf
        from t2i_core.weights.quantize import load_gguf_transformer

        write_gguf(SD3Transformer2DModel.from_pretrained(tiny_sd3, subfolder="transformer", local_files_only=True),
                   tmp_path / "sd3.gguf", method)
        pipe = _load(tiny_sd3, transformer=load_gguf_transformer(tmp_path / "sd3.gguf", SD3Transformer2DModel,
                                                                 tiny_sd3, torch.float32, subfolder="transformer"))
    else:
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
    model = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=16, out_channels=16, num_layers=layers,
                                  attention_head_dim=64, num_attention_heads=width // 64, joint_attention_dim=width,
                                  caption_projection_dim=width, pooled_projection_dim=width, pos_embed_max_size=16)
    g = torch.Generator().manual_seed(1)
    inputs = dict(hidden_states=torch.randn(1, 16, 16, 16, generator=g),
                  encoder_hidden_states=torch.randn(1, 32, width, generator=g),
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
    inputs = dict(hidden_states=torch.randn(1, 64, 64, generator=g),
                  encoder_hidden_states=torch.randn(1, 32, width, generator=g),
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
    linears = sum(1 for m in model.modules() if isinstance(m, torch.nn.Linear))
    if method in ("fp8", "int8"):
        quantized = copy.deepcopy(model)
        apply_quantization({"transformer": quantized}, parse_quantization({"transformer": method}), "cpu")
    else:
        written = write_gguf(model, folder / f"{method}.gguf", method)
        assert Counter(written.values())[method] >= linears - 1  # FLUX's x_embedder (64 in) is Q8_0 under Q4_K
        quantized = load_gguf_transformer(folder / f"{method}.gguf", type(model), folder, torch.float32)
    errors = _layer_errors(model, quantized)
    assert len(errors) >= (linears - 1 if method != "fp8" else linears // 2)
    assert max(errors.values()) < PER_WEIGHT_ERR[method], max(errors.items(), key=lambda item: item[1])
    with torch.inference_mode():
        out = quantized(**inputs).sample
    # fp8 keeps the AdaLN modulation linears as loaded (diffusers' "norm" skip pattern): ~half, not a quarter
    most = {"fp8": 0.55, "int8": 0.3, "Q8_0": 0.3, "Q4_K": 0.16}[method]
    assert component_bytes(quantized) < component_bytes(model) * most
    assert rel_err(out, ref) < REL_ERR[method]


def _layer_errors(model, quantized) -> dict[str, float]:
    """Relative error of each quantized linear layer's weight, as stored, against the original's."""
    import torch
    from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

    original = dict(model.named_modules())
    errors = {}
    for name, module in quantized.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(module, torch.nn.Linear) or weight is None:
            continue
        if type(weight).__name__ == "GGUFParameter":
            stored = dequantize_gguf_tensor(weight)
        elif type(weight).__module__.startswith("torchao"):
            stored = weight.dequantize()
        elif weight.dtype == torch.float8_e4m3fn:
            stored = weight
        else:
            continue
        errors[name] = rel_err(stored, original[name].weight)
    return errors


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
