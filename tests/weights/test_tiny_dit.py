"""The tiny DiT pipelines (FLUX.1, Kontext, FLUX.2 klein, Qwen-Image, Qwen-Image-Edit, Z-Image): built
offline, deterministic, loadable by plain diffusers, generating 64 px images reproducibly."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from t2i_core.weights.tiny_dit import DIT_FAMILIES, build_tiny_dit

PIPELINE_CLASS = {
    "flux": "FluxPipeline", "flux-kontext": "FluxKontextPipeline", "flux2-klein": "Flux2KleinPipeline",
    "qwen-image": "QwenImagePipeline", "qwen-image-edit": "QwenImageEditPipeline", "z-image": "ZImagePipeline",
}
# Family -> (latent channels of the VAE, the transformer's input channels).
LATENTS = {
    "flux": (16, 64), "flux-kontext": (16, 64), "flux2-klein": (32, 128),
    "qwen-image": (16, 64), "qwen-image-edit": (16, 64), "z-image": (16, 16),
}
SIZE = dict(height=64, width=64, num_inference_steps=2, output_type="np")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models run many small operators: on a shared 2-core machine, two OpenMP threads mostly wait
    for each other (tens of times slower here), and one thread computes the same values."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-dit")
    return {family: build_tiny_dit(family, root / family) for family in DIT_FAMILIES}


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _image(seed: int, size: int = 64):
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def _generators(*seeds: int) -> list:
    import torch

    return [torch.Generator().manual_seed(s) for s in seeds]


def _load(cls_name: str, folder: Path):
    import diffusers

    return getattr(diffusers, cls_name).from_pretrained(folder, local_files_only=True)


def _check_reproducible(run) -> None:
    """``run(seeds)`` returns images (N, 64, 64, 3); the same seeds in the same batch shape give the same
    pixels, and different seeds differ."""
    first = run((7, 8))
    assert first.shape == (2, 64, 64, 3)
    assert np.isfinite(first).all()
    assert not np.array_equal(first[0], first[1])
    assert np.array_equal(first, run((7, 8)))


@pytest.fixture
def qwen_vl_processor():
    """Qwen-Image-Edit's ``Qwen2VLProcessor`` can be loaded: the library patch the engine installs
    (t2i_core/patches/transformers.py: without torchvision, the processor is built without its video
    processor; the image path all the edit pipelines use stays transformers' own)."""
    from t2i_core.patches.transformers import video_processor_optional

    video_processor_optional()


def test_same_folder_every_build(folders, tmp_path):
    for family in DIT_FAMILIES:
        again = build_tiny_dit(family, tmp_path / family)
        assert _digest(again) == _digest(folders[family]), family


def test_folders_are_small_and_name_their_pipeline(folders):
    for family, folder in folders.items():
        index = json.loads((folder / "model_index.json").read_text())
        assert index["_class_name"] == PIPELINE_CLASS[family]
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        assert size < 4_000_000, (family, size)
        assert json.loads((folder / "t2i_tiny.json").read_text())["family"] == family


def test_unknown_family_is_refused(tmp_path):
    with pytest.raises(ValueError, match="family must be one of"):
        build_tiny_dit("sd9", tmp_path / "x")


def test_qwen_template_prefixes_are_as_many_tokens_as_the_pipelines_drop(folders):
    """The Qwen-Image pipelines cut the system prompt off the encoder output by a fixed token count."""
    from diffusers import QwenImageEditPipeline, QwenImagePipeline
    from transformers import Qwen2Tokenizer

    tokenizer = Qwen2Tokenizer.from_pretrained(folders["qwen-image"] / "tokenizer", local_files_only=True)
    for cls in (QwenImagePipeline, QwenImageEditPipeline):
        extra = {"processor": None} if cls is QwenImageEditPipeline else {}
        pipe = cls(scheduler=None, vae=None, text_encoder=None, tokenizer=tokenizer, transformer=None, **extra)
        user = "<|im_start|>user\n"
        prefix = pipe.prompt_template_encode.split(user)[0] + user
        assert len(tokenizer(prefix).input_ids) == pipe.prompt_template_encode_start_idx, cls.__name__
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "a cat"}], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert chat == "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def test_vae_scale_and_latent_channels_are_the_families_own(folders):
    for family in ("flux", "flux2-klein", "qwen-image", "z-image"):
        pipe = _load("DiffusionPipeline", folders[family])
        assert pipe.vae_scale_factor == 8, family
        latent_channels = getattr(pipe.vae.config, "latent_channels", None) or pipe.vae.config.z_dim
        assert (latent_channels, pipe.transformer.config.in_channels) == LATENTS[family], family


@pytest.mark.parametrize("family", ["flux", "flux2-klein", "qwen-image", "z-image"])
def test_text_to_image(folders, family):
    pipe = _load("DiffusionPipeline", folders[family])
    assert type(pipe).__name__ == PIPELINE_CLASS[family]
    steps: list[int] = []

    def on_step(pipeline, step, timestep, kwargs):
        steps.append(step)
        return kwargs

    _check_reproducible(lambda seeds: pipe(
        prompt="a red fox in the snow", generator=_generators(*seeds), num_images_per_prompt=len(seeds),
        callback_on_step_end=on_step, **SIZE,
    ).images)
    assert steps == [0, 1, 0, 1]


def test_flux_takes_the_distilled_guidance_and_true_cfg(folders):
    pipe = _load("FluxPipeline", folders["flux"])
    assert pipe.transformer.config.guidance_embeds  # FLUX.1 [dev]-like
    run = lambda **kw: pipe(prompt="a red fox", generator=_generators(3), **SIZE, **kw).images  # noqa: E731
    assert not np.array_equal(run(guidance_scale=1.0), run(guidance_scale=5.0))
    assert not np.array_equal(run(), run(negative_prompt="blurry", true_cfg_scale=4.0))


def test_flux_image_to_image_and_inpaint_from_the_same_folder(folders):
    from diffusers import FluxImg2ImgPipeline, FluxInpaintPipeline

    base = _load("FluxPipeline", folders["flux"])
    img2img = FluxImg2ImgPipeline.from_pipe(base)
    inpaint = FluxInpaintPipeline.from_pipe(base)
    assert img2img.transformer is base.transformer and inpaint.vae is base.vae
    mask = _image(5).convert("L").point(lambda v: 255 if v > 127 else 0)
    _check_reproducible(lambda seeds: img2img(
        prompt="a red fox", image=_image(1), strength=0.6, generator=_generators(*seeds),
        num_images_per_prompt=len(seeds), **SIZE,
    ).images)
    _check_reproducible(lambda seeds: inpaint(
        prompt="a red fox", image=_image(1), mask_image=mask, strength=0.9, generator=_generators(*seeds),
        num_images_per_prompt=len(seeds), **SIZE,
    ).images)


def test_flux_kontext_edits_an_image(folders):
    pipe = _load("DiffusionPipeline", folders["flux-kontext"])
    assert type(pipe).__name__ == "FluxKontextPipeline"
    # Kontext resizes to max_area (1 MP) and snaps the input to its preferred sizes unless told not to.
    _check_reproducible(lambda seeds: pipe(
        prompt="make it blue", image=_image(1), max_area=64 * 64, _auto_resize=False,
        generator=_generators(*seeds), num_images_per_prompt=len(seeds), **SIZE,
    ).images)


def test_flux2_klein_takes_reference_images_and_a_non_distilled_guidance(folders):
    from diffusers import Flux2KleinPipeline

    pipe = _load("Flux2KleinPipeline", folders["flux2-klein"])
    assert pipe.config.is_distilled
    _check_reproducible(lambda seeds: pipe(
        prompt="the cat wears the hat", image=[_image(1), _image(2)], generator=_generators(*seeds),
        num_images_per_prompt=len(seeds), **SIZE,
    ).images)
    # As a klein "base" checkpoint (not step-distilled): real CFG against an empty prompt.
    base = Flux2KleinPipeline.from_pretrained(folders["flux2-klein"], local_files_only=True, is_distilled=False)
    assert base.config.is_distilled is False
    run = lambda g: base(prompt="a red fox", generator=_generators(3), guidance_scale=g, **SIZE).images  # noqa: E731
    assert not np.array_equal(run(1.0), run(4.0))


def test_qwen_image_true_cfg_and_z_image_cfg(folders):
    qwen = _load("QwenImagePipeline", folders["qwen-image"])
    run = lambda **kw: qwen(prompt="a red fox", generator=_generators(3), **SIZE, **kw).images  # noqa: E731
    assert not np.array_equal(run(true_cfg_scale=1.0), run(negative_prompt="blurry", true_cfg_scale=4.0))
    zimage = _load("ZImagePipeline", folders["z-image"])
    run = lambda **kw: zimage(prompt="a red fox", generator=_generators(3), **SIZE, **kw).images  # noqa: E731
    assert not np.array_equal(run(guidance_scale=0.0), run(guidance_scale=4.0, negative_prompt="blurry"))


@pytest.mark.slow
def test_qwen_image_edit_edits_an_image(folders, qwen_vl_processor):
    """Slow by the pipeline's design: it encodes the input image at 1 MP whatever the output size."""
    pipe = _load("DiffusionPipeline", folders["qwen-image-edit"])
    assert type(pipe).__name__ == "QwenImageEditPipeline"
    _check_reproducible(lambda seeds: pipe(
        prompt="make it blue", image=_image(1), generator=_generators(*seeds),
        num_images_per_prompt=len(seeds), true_cfg_scale=1.0, **SIZE,
    ).images)


@pytest.mark.slow
def test_qwen_image_edit_plus_takes_two_images(folders, qwen_vl_processor):
    """The multi-image edit pipeline loads from the same folder (its components are Qwen-Image-Edit's)."""
    pipe = _load("QwenImageEditPlusPipeline", folders["qwen-image-edit"])
    images = pipe(
        prompt="the cat from picture 1 in the room of picture 2", image=[_image(1), _image(2, 48)],
        generator=_generators(7, 8), num_images_per_prompt=2, true_cfg_scale=1.0, **SIZE,
    ).images
    assert images.shape == (2, 64, 64, 3) and np.isfinite(images).all()
    assert not np.array_equal(images[0], images[1])


def test_tiny_sources_of_the_dit_families_resolve_to_cached_folders(tmp_path, monkeypatch):
    """``tiny:<family>`` of a DiT family resolves through weights/sources.py like the SD ones: built
    once into the cache, then reused."""
    from t2i_core.weights import sources
    from t2i_core.weights.tiny_pipelines import tiny_folder

    monkeypatch.setenv("T2I_CACHE_DIR", str(tmp_path))
    path = sources.resolve(sources.Source.parse("tiny:z-image"), "pipeline", "model 'builtin/tiny-z-image'")
    assert path == str(tiny_folder("z-image")) and path.startswith(str(tmp_path))
    assert json.loads((Path(path) / "t2i_tiny.json").read_text())["family"] == "z-image"
    stamp = (Path(path) / "model_index.json").stat().st_mtime_ns
    assert sources.resolve(sources.Source.parse("tiny:z-image"), "pipeline", "x") == path
    assert (Path(path) / "model_index.json").stat().st_mtime_ns == stamp  # not built again
