"""Tiny random-weight pipelines of the DiT families (FLUX.1, FLUX.1 Kontext, FLUX.2 klein, Qwen-Image,
Qwen-Image-Edit, Z-Image), built offline.

Each folder is a real ``save_pretrained`` pipeline of its family: the family's transformer, a VAE with the
real down-scale factor 8 and the family's real latent channels, its text encoder(s) and scheduler
configured as the published checkpoints are; only the widths and depths are tiny. Tokenizers are
written by the code (CLIP and T5 as in ``weights.tiny``; a small byte-level BPE vocabulary in the Qwen2
format for the Qwen text encoders, whose prompt-template prefixes tokenize to exactly as many tokens as
with the real vocabulary, since the pipelines drop that many tokens from the encoder's output). Weights
come from a fixed seed, so every machine writes the same folder.

Load a folder with ``<PipelineClass>.from_pretrained(folder, local_files_only=True)`` or
``diffusers.DiffusionPipeline.from_pretrained``.

Sizes (what each tiny mirrors):

- ``flux``: FLUX.1 [dev] layout (``guidance_embeds=True``: the transformer embeds the distilled guidance
  scale). CLIP (pooled) + T5, AutoencoderKL with 16 latent channels, shift/scale of the FLUX VAE.
- ``flux-kontext``: the same model class as ``flux`` under ``FluxKontextPipeline``.
- ``flux2-klein``: FLUX.2 [klein] 4B layout: Qwen3 causal LM text encoder (28 layers, as the pipeline
  stacks hidden states 9, 18 and 27), AutoencoderKLFlux2 with 32 latent channels (128 after the 2x2
  patchify), ``is_distilled=True`` (the step-distilled release: guidance is ignored).
- ``qwen-image`` / ``qwen-image-edit``: Qwen2.5-VL text encoder with a tiny vision tower,
  AutoencoderKLQwenImage (video-style, z_dim 16); the edit folder adds the Qwen2-VL processor, names
  ``QwenImageEditPipeline`` and loads as ``QwenImageEditPlusPipeline`` too (the same components).
  transformers 5.23 loads that processor only where torchvision is installed (its video processor).
- ``z-image``: Qwen3 text encoder (base model), AutoencoderKL with 16 latent channels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from t2i_core.weights.tiny import write_built_folder, write_clip_tokenizer, write_t5_tokenizer

DIT_FAMILIES = ("flux", "flux-kontext", "flux2-klein", "qwen-image", "qwen-image-edit", "z-image")
# Bump when the architecture or the weights change.
BUILDER_VERSION = "1"
WEIGHT_SEED = 20261207

# ---------------------------------------------------------------------------------------------------
# Qwen2 byte-level BPE tokenizer (Qwen2.5-VL and Qwen3 share it), written by the code.
# ---------------------------------------------------------------------------------------------------

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<think>", "</think>",
)

# The Qwen-Image pipelines drop the tokens of their system-prompt prefix from the encoder output by
# count (``prompt_template_encode_start_idx``); these texts hold every word those prefixes use, so that
# each word is one token, as it is with the real vocabulary.
_QWEN_TEMPLATE_TEXTS = (
    "system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial "
    "relationships of the objects and background:",
    "system\nDescribe the key features of the input image (color, shape, size, texture, objects, "
    "background), then explain how the user's text instruction should alter or modify the image. "
    "Generate a new image that meets the user's requirements while maintaining consistency with the "
    "original input where appropriate.",
    "user\n", "assistant\n", "Picture 1: Picture 2: Picture 3: ",
)
_COMMON_WORDS = (
    "a photo of an astronaut riding horse on the moon cat dog red blue green white black in with and "
    "portrait painting landscape city street night sunset forest mountain river sky make it turn into "
    "add remove change"
)

QWEN_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for item in message['content'] %}"
    "{%- if item['type'] == 'image' %}{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif item['type'] == 'text' %}{{- item['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}{%- endif %}"
)
"""Qwen's chat format for one turn: ``<|im_start|>role\\ncontent<|im_end|>\\n``; with
``enable_thinking=False`` the generation prompt carries an empty think block, as Qwen3's template does."""


def _qwen_pretokenize(text: str) -> list[str]:
    """The byte-level pre-tokens of ``text`` under Qwen2's split regex (spaces shown as 'Ġ')."""
    from tokenizers import Regex, pre_tokenizers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    return [piece for piece, _ in pre.pre_tokenize_str(text)]


def qwen_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A small Qwen2-format vocabulary: the 256 byte-level characters, every pre-token of the pipeline
    prompt templates and a few common words as whole tokens, then common letter pairs.

    Whole-word tokens are built by left-to-right merge chains. Chains of pre-tokens that begin with a
    non-letter (a space, as 'Ġ', or punctuation) come first: their merges can only fire at a word
    start, where they outrank every other pair, so each such word ends as one token. Chains of bare
    words (a word right after a newline or a special token) and the letter pairs follow; the test
    checks that the template prefixes still come out at the pipelines' token counts."""
    from tokenizers import pre_tokenizers

    vocab: dict[str, int] = {}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):  # code-point order is GPT-2's byte order
        vocab[char] = len(vocab)
    words: list[str] = []
    for text in _QWEN_TEMPLATE_TEXTS + (" " + _COMMON_WORDS,):
        for piece in _qwen_pretokenize(text):
            if len(piece) > 1 and piece not in words:
                words.append(piece)
    # 'Ġ' (a space) is a non-ASCII letter in the byte-level alphabet; ASCII letters stand for themselves.
    bare = [w for w in words if w[0].isascii() and w[0].isalpha()]
    prefixed = [w for w in words if w not in bare]
    merges: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()

    def add(left: str, right: str) -> None:
        if (left, right) not in seen:
            seen.add((left, right))
            merges.append((left, right))
            vocab.setdefault(left + right, len(vocab))

    for word in prefixed + bare:
        for i in range(1, len(word)):
            add(word[:i], word[i])
    letters = "etaoinshrdlcumwfgypbvk"
    for a in letters:
        for b in letters:
            add(a, b)
    return vocab, merges


def qwen_tokenizer():
    """A Qwen2 tokenizer (``Qwen2Tokenizer``: byte-level BPE, Qwen's special tokens and chat template)
    over the vocabulary of ``qwen_vocab_and_merges``; ``save_pretrained`` writes it as tokenizer.json
    (vocabulary and merges), tokenizer_config.json and chat_template.jinja."""
    from transformers import Qwen2Tokenizer

    vocab, merges = qwen_vocab_and_merges()
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=merges, errors="replace",
        unk_token=None, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        extra_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]), model_max_length=131072,
    )
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


# ---------------------------------------------------------------------------------------------------
# Components
# ---------------------------------------------------------------------------------------------------


def _seeded(offset: int, make: Callable[[], Any]) -> Any:
    import torch

    torch.manual_seed(WEIGHT_SEED + offset)
    return make().eval()


def _kl_vae(latent_channels: int, **extra: Any):
    """An AutoencoderKL with four blocks (down-scale 2**3 = 8), as the FLUX.1/SD3/Z-Image VAE."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=latent_channels, layers_per_block=1, norm_num_groups=8, sample_size=64,
        use_quant_conv=False, use_post_quant_conv=False, **extra,
    )


def _flow_scheduler(**config: Any):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**config)


# FLUX.1 [dev]'s scheduler configuration.
_FLUX_SCHEDULER = dict(
    base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15, shift=3.0,
    use_dynamic_shifting=True,
)
# Qwen-Image's scheduler configuration.
_QWEN_SCHEDULER = dict(
    base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9, shift=1.0,
    shift_terminal=0.02, time_shift_type="exponential", use_dynamic_shifting=True,
)


def _qwen_text_config(vocab_size: int, hidden: int) -> dict[str, Any]:
    return dict(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
        num_attention_heads=2, num_key_value_heads=1, head_dim=hidden // 2, max_position_embeddings=4096,
        rms_norm_eps=1e-6, tie_word_embeddings=True,
    )


def _build_flux(folder: Path, scratch: Path, pipeline_class: str = "FluxPipeline") -> None:
    """FLUX.1 [dev]: MMDiT with guidance embedding, CLIP pooled output + T5 sequence."""
    import diffusers
    from diffusers import FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast

    clip_vocab = write_clip_tokenizer(scratch / "clip")
    tokenizer = CLIPTokenizer.from_pretrained(scratch / "clip", local_files_only=True)
    t5_vocab = write_t5_tokenizer(scratch / "t5")
    tokenizer_2 = T5TokenizerFast.from_pretrained(scratch / "t5", local_files_only=True)
    text_encoder = _seeded(1, lambda: CLIPTextModel(CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, hidden_size=32, intermediate_size=64, num_attention_heads=4,
        num_hidden_layers=2, vocab_size=clip_vocab, max_position_embeddings=77, projection_dim=32,
    )))
    text_encoder_2 = _seeded(2, lambda: T5EncoderModel(T5Config(
        vocab_size=t5_vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        feed_forward_proj="gated-gelu",
    )))
    transformer = _seeded(0, lambda: FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
        guidance_embeds=True, axes_dims_rope=(4, 6, 6),
    ))
    vae = _seeded(3, lambda: _kl_vae(16, scaling_factor=0.3611, shift_factor=0.1159))
    getattr(diffusers, pipeline_class)(
        transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, scheduler=_flow_scheduler(**_FLUX_SCHEDULER),
        image_encoder=None, feature_extractor=None,
    ).save_pretrained(folder)


def _build_flux_kontext(folder: Path, scratch: Path) -> None:
    _build_flux(folder, scratch, pipeline_class="FluxKontextPipeline")


def _build_flux2_klein(folder: Path, scratch: Path) -> None:
    """FLUX.2 [klein]: Flux2 transformer over a Qwen3 causal LM's stacked hidden states 9/18/27."""
    from diffusers import AutoencoderKLFlux2, Flux2KleinPipeline, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = qwen_tokenizer()
    hidden = 16
    text_encoder = _seeded(1, lambda: Qwen3ForCausalLM(Qwen3Config(
        **_qwen_text_config(len(tokenizer), hidden), num_hidden_layers=28,
        bos_token_id=None, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )))
    transformer = _seeded(0, lambda: Flux2Transformer2DModel(
        patch_size=1, in_channels=128, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=3 * hidden, timestep_guidance_channels=256,
        axes_dims_rope=(4, 4, 4, 4), guidance_embeds=False,
    ))
    vae = _seeded(2, lambda: AutoencoderKLFlux2(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 16, 16), layers_per_block=1,
        latent_channels=32, norm_num_groups=8, sample_size=64,
    ))
    Flux2KleinPipeline(
        transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        scheduler=_flow_scheduler(**_FLUX_SCHEDULER, time_shift_type="exponential"), is_distilled=True,
    ).save_pretrained(folder)


def _qwen_vl_encoder(tokenizer, hidden: int = 16):
    """A Qwen2.5-VL model (text decoder + vision tower with the real 14 px patches, 2x2 merge)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"),
    )}
    config = Qwen2_5_VLConfig(
        text_config=dict(
            **_qwen_text_config(len(tokenizer), hidden), num_hidden_layers=2, rope_theta=1000000.0,
            bos_token_id=None,
            rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]},
            eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            depth=2, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=hidden,
            patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
            fullatt_block_indexes=[1],
        ),
        tie_word_embeddings=True, bos_token_id=None, **ids,
    )
    return _seeded(1, lambda: Qwen2_5_VLForConditionalGeneration(config))


def _qwen_image_parts() -> dict[str, Any]:
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel

    tokenizer = qwen_tokenizer()
    hidden = 16
    return dict(
        tokenizer=tokenizer,
        text_encoder=_qwen_vl_encoder(tokenizer, hidden),
        transformer=_seeded(0, lambda: QwenImageTransformer2DModel(
            patch_size=2, in_channels=64, out_channels=16, num_layers=2, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=hidden, guidance_embeds=False, axes_dims_rope=(8, 4, 4),
        )),
        vae=_seeded(2, lambda: AutoencoderKLQwenImage(
            base_dim=4, z_dim=16, dim_mult=[1, 1, 2, 2], num_res_blocks=1,
            temperal_downsample=[False, True, True],
        )),
        scheduler=_flow_scheduler(**_QWEN_SCHEDULER),
    )


def _build_qwen_image(folder: Path, scratch: Path) -> None:
    from diffusers import QwenImagePipeline

    QwenImagePipeline(**_qwen_image_parts()).save_pretrained(folder)


# Qwen-Image-Edit's processor settings (the published processor/ folder's values).
_QWEN_VL_IMAGE = dict(
    patch_size=14, temporal_patch_size=2, merge_size=2, resample=3, do_resize=True, do_rescale=True,
    rescale_factor=1 / 255, do_normalize=True, do_convert_rgb=True,
    image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
    size={"shortest_edge": 3136, "longest_edge": 12845056},
)


def _write_qwen_vl_processor(folder: Path, tokenizer) -> None:
    """Write the Qwen2-VL processor folder (image and video processor configs, tokenizer, chat
    template) as files: transformers 5 builds a ``Qwen2VLProcessor`` only with its video processor,
    which needs torchvision, and the folder must not depend on what the building machine has."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2VLProcessor", **_QWEN_VL_IMAGE},
        indent=2, sort_keys=True,
    ))
    (folder / "video_preprocessor_config.json").write_text(json.dumps(
        {"video_processor_type": "Qwen2VLVideoProcessor", "processor_class": "Qwen2VLProcessor",
         **_QWEN_VL_IMAGE, "size": {"shortest_edge": 128 * 28 * 28, "longest_edge": 28 * 28 * 768}},
        indent=2, sort_keys=True,
    ))
    (folder / "processor_config.json").write_text(json.dumps({"processor_class": "Qwen2VLProcessor"}, indent=2))


def _build_qwen_image_edit(folder: Path, scratch: Path) -> None:
    """Qwen-Image-Edit: the Qwen-Image components plus the Qwen2-VL processor that feeds the input
    image(s) to the text encoder's vision tower. The components are saved through QwenImagePipeline
    (saving QwenImageEditPipeline would need a processor object: see ``_write_qwen_vl_processor``),
    then the index names the edit pipeline and its processor."""
    from diffusers import QwenImagePipeline

    parts = _qwen_image_parts()
    QwenImagePipeline(**parts).save_pretrained(folder)
    _write_qwen_vl_processor(folder / "processor", parts["tokenizer"])
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())
    index.update(_class_name="QwenImageEditPipeline", processor=["transformers", "Qwen2VLProcessor"])
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _build_z_image(folder: Path, scratch: Path) -> None:
    """Z-Image: single-stream DiT over a Qwen3 (base model) encoder's second-to-last hidden state."""
    from diffusers import ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    tokenizer = qwen_tokenizer()
    hidden = 16
    text_encoder = _seeded(1, lambda: Qwen3Model(Qwen3Config(
        **_qwen_text_config(len(tokenizer), hidden), num_hidden_layers=2,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), pad_token_id=tokenizer.pad_token_id,
    )))
    transformer = _seeded(0, lambda: ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32, n_layers=2, n_refiner_layers=1,
        n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True, cap_feat_dim=hidden, rope_theta=256.0,
        t_scale=1000.0, axes_dims=[8, 4, 4], axes_lens=[1024, 512, 512],
    ))
    vae = _seeded(2, lambda: _kl_vae(16, scaling_factor=0.3611, shift_factor=0.1159))
    ZImagePipeline(
        transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        scheduler=_flow_scheduler(shift=3.0, use_dynamic_shifting=False),
    ).save_pretrained(folder)


_BUILDERS: dict[str, Callable[[Path, Path], None]] = {
    "flux": _build_flux, "flux-kontext": _build_flux_kontext, "flux2-klein": _build_flux2_klein,
    "qwen-image": _build_qwen_image, "qwen-image-edit": _build_qwen_image_edit, "z-image": _build_z_image,
}


def build_tiny_dit(family: str, out: Path, replace: bool = True) -> Path:
    """Write the tiny pipeline of ``family`` (one of ``DIT_FAMILIES``) to ``out``, replacing what is
    there unless ``replace`` is false (see ``weights.tiny.write_folder``); return ``out``."""
    if family not in _BUILDERS:
        raise ValueError(f"family must be one of {', '.join(DIT_FAMILIES)}; got {family!r}")

    stamp = {"family": family, "builder_version": BUILDER_VERSION, "seed": WEIGHT_SEED}
    return write_built_folder(out, _BUILDERS[family], stamp, replace=replace)
