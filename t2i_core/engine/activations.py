"""The memory one pipeline call needs beyond the weights (its activations), estimated before it runs.

On the CPU there is no out-of-memory error to catch: past the container's limit the kernel kills the
process. So the engine admits a batch only when this estimate fits (t2i_core/engine/admission.py).

The estimate reads the structure of the loaded pipeline (no weights): the channels of the VAE's
decoder (and encoder, for edits) at each resolution, the denoiser's channels and attention levels
(UNet) or width and tokens (DiT), the compute dtype. Each stage's peak is a calibrated multiple of its
largest activations; the call's peak is the largest stage's, plus the output image's buffers.

Calibration: ``python -m t2i_core bench-memory --calibrate`` (CPU, torch 2.13, diffusers 0.42; the peak
resident set of a fresh process around one stage, Linux ``VmHWM`` reset just before it, less what the
process held; t2i_core/devtools/bench/memory_probe.py). Estimate / measured, per stage (before
``SAFETY``), all at least 1:

- VAE decode: the full-resolution stage dominates (SD's decoder: an upsampled 256-channel tensor and
  its convolution at the image's size). Its attention is *not* quadratic here: torch's CPU
  ``scaled_dot_product_attention`` is a flash kernel (4096 tokens add 4-6 MB, not a 64 MB matrix).
  Peak / largest level (channels x pixels x dtype size): SD's VAE at a quarter of its width, float32,
  3.9 at 1024 px and 3.75 at 2048 px (3.84 GiB); SD's own VAE 3.8 (float32) and 4.1 (bfloat16) at
  512 px: ``CONV_RATIO`` 4.2. Estimate / measured over 20 decodes (tiny, quarter-width and full SD
  VAEs, TAESD, 64-2048 px, float32/bfloat16/float64, batch 2, sliced, tiled): 1.04-1.46 (small tiny
  decodes up to 4.8, a few MB). Tensors under glibc's 32 MiB mmap threshold come from the heap, which
  fragments: ``HEAP_RATIO``. float64 (the bit-exact tiny models) has no oneDNN kernels: torch's im2col
  convolution keeps a 9 x input-channels buffer, ratio 12 (``IM2COL_RATIO`` 13).
- VAE encode (edits): 4.8 (quarter-width SD VAE, 1024 px): the input is padded before downsampling.
- UNet step: SD-Turbo's UNet, bfloat16: 75 MiB (256 px), 91 (512), 331 (1024), 739 (1536), 1142 (2048);
  float32: 132, 211, 733 (1024). A fixed part (~4% of the weights: the kernels' packed weights) and
  ~11000 values per latent token at the largest sizes, the feed-forward of the first attention level
  and the skip connections: estimate / measured 1.27-2.35.
- DiT (SD3, FLUX.1, FLUX.2, Qwen-Image, Z-Image): not calibrated (no full-size DiT architecture
  measured here); ``DIT_RATIO`` is a guess on the safe side. Tokens: the image's 2x2 latent patches
  (FLUX's pipelines pack them, the others' transformers patch), the text's (``DIT_TEXT_TOKENS`` for
  SD3, ``DIT_LONG_TEXT_TOKENS`` for the T5 / Qwen encoders of the newer families) and, for reference
  edits, each reference image's patches (the transformer attends to them beside the image's).
  Qwen-Image's video-style VAE (causal 3D convolutions over one frame) is estimated as a 2D VAE of its
  widths: uncalibrated too.
- VAE tiling (diffusers ``enable_tiling``) decodes tiles of the VAE's ``sample_size`` one after
  another: the decoder's peak is one tile's, plus the decoded tiles kept for blending (3 channels):
  2048 px in 512 px tiles, quarter-width VAE, float32: 483 MiB measured, against 3841 MiB whole.

- A whole engine call holds more than its stages measured alone, and its peak moves from run to run:
  ``SAFETY`` (see there), from engine calls measured in a real 4 GiB cgroup
  (``python -m t2i_core bench-memory --engine 1400 --cgroup-limit 4GiB --budget 4GiB``).

On CUDA the same estimate is used (uncalibrated there: the caching allocator and cuDNN's workspaces
differ); an out-of-memory error still splits the batch (t2i_core/engine/core.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

#: peak / largest decoder (or encoder) activation: oneDNN convolutions (float32, bfloat16, float16)
CONV_RATIO = 4.2
#: the same without oneDNN (float64): im2col buffers
IM2COL_RATIO = 13.0
#: the encoder's full-resolution level pads its input before downsampling: a copy more (measured 4.8)
ENCODE_EXTRA = 1.0
#: UNet: peak / (channels x tokens) of the widest attention level (feed-forward, attention inputs) and
#: of a level without attention; plus the skip connections, which all live until the up blocks
UNET_ATTENTION_RATIO = 30.0
UNET_RESNET_RATIO = 6.0
#: what the denoiser's first step allocates whatever the size and holds through the decode (the
#: kernels' packed weights, scratch): this share of its weights, at least the floor
DENOISER_HELD_SHARE = 0.04
DENOISER_HELD_FLOOR = 8 * 2**20
#: DiT (SD3's MMDiT): peak / (width x tokens, image and text) (feed-forward 4x, joint attention inputs)
DIT_RATIO = 16.0
#: output: the decoded tensor, diffusers' post-processing (clamp, float32 numpy) and the engine's uint8
#: conversion, bytes per output value beyond one value of the compute dtype
OUTPUT_BYTES_PER_VALUE = 20
#: the C heap's fragmentation: tensors under glibc's largest mmap threshold (32 MiB) come from the heap;
#: a stage's largest activation, up to that size, this many times over (see above)
HEAP_RATIO = 3.0
MMAP_THRESHOLD = 32 * 2**20
#: what every call takes besides: text encoding, the scheduler, small tensors
RESERVE_BYTES = 8 * 2**20
#: the whole call against its stages' estimates. Engine calls of SD-Turbo's architecture (bfloat16, 1
#: step, in a 4 GiB cgroup) against the stages' sum: 512 px 662 MB (0.87 of it), 1024 px in 512 px tiles
#: 803 MB (0.96), 1400 px 1002, 1017 and 1069 MB in three runs (1.09-1.16: its peak moves from run to
#: run, and the pipeline holds more than its stages measured alone), 1664 px 1144 MB (1.00)
SAFETY = 1.25
#: the smallest tile a tiled decode is given (pixels)
SMALLEST_TILE = 512
#: the text tokens a DiT attends to beside the image's (SD3: 77 CLIP + 256 T5)
DIT_TEXT_TOKENS = 333
#: the same for FLUX.1 (512 T5 tokens), FLUX.2, Qwen-Image and Z-Image (up to 512 of their encoders')
DIT_LONG_TEXT_TOKENS = 512


@dataclass(frozen=True)
class Levels:
    """Channels present at each resolution of a VAE half, from the latent's (index 0) to the image's."""

    channels: tuple[int, ...]

    def largest(self, width: int, height: int) -> int:
        """The most values of one activation at any level, for an image of ``width`` x ``height``."""
        n = len(self.channels)
        return max(c * (width >> (n - 1 - i)) * (height >> (n - 1 - i)) for i, c in enumerate(self.channels))


@dataclass(frozen=True)
class Shapes:
    """What the estimate reads from a pipeline: structure, not weights."""

    dtype_size: int
    decode_dtype_size: int  # the VAE's (SDXL upcasts a float16 VAE)
    im2col: bool  # float64 on the CPU: convolutions without oneDNN
    scale: int  # pixels per latent value, per side (8)
    decoder: Levels
    encoder: Levels
    #: the VAE's own tile side for a tiled decode (``vae.enable_tiling()``: its sample size), in pixels;
    #: 0 where it does not tile
    tile_px: int
    #: the denoiser: "unet" with per level (channels, attention?), or "dit" with width and patch
    denoiser: str
    denoiser_bytes: int = 0  # its weights
    unet_levels: tuple[tuple[int, bool], ...] = ()
    unet_layers: int = 2
    dit_width: int = 0
    dit_patch: int = 2
    dit_text_tokens: int = DIT_TEXT_TOKENS


@dataclass(frozen=True)
class Estimate:
    """Bytes of each stage's peak, and of the call (the largest stage, the output, the reserve)."""

    width: int
    height: int
    batch: int
    tile: int  # the VAE decodes tiles of this side (pixels); 0: the whole image at once
    held: int  # through the whole call (see DENOISER_HELD_SHARE)
    denoise: int
    encode: int
    decode: int
    output: int

    @property
    def total(self) -> int:
        return int(SAFETY * (self.held + max(self.denoise, self.encode, self.decode + self.output) + RESERVE_BYTES))

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}


def _kl_levels(block_out_channels: tuple[int, ...], decoder: bool) -> Levels:
    """AutoencoderKL: the decoder's up block i runs at the i-th resolution from the latent's and its
    upsampler carries its channels to the next one; the encoder mirrors it."""
    out = list(block_out_channels)
    if decoder:
        rev = out[::-1]
        return Levels(tuple(max(rev[i], rev[i - 1] if i else rev[0]) for i in range(len(rev))))
    levels = [max(out[i], out[i - 1] if i else out[0]) for i in range(len(out))]
    return Levels(tuple(levels[::-1]))


def shapes_from_configs(vae: dict[str, Any], dtype_size: int, *, unet: dict[str, Any] | None = None,
                        dit: dict[str, Any] | None = None, im2col: bool = False, decode_dtype_size: int | None = None,
                        tile_px: int | None = None, denoiser_bytes: int = 0) -> Shapes:
    """The structure of a pipeline from its components' configs (``config.json`` of vae, unet or
    transformer): enough to estimate a model that is not loaded (benchmarks, tests)."""
    if "base_dim" in vae and "dim_mult" in vae:  # Qwen-Image's (Wan's) VAE: its widths as a 2D VAE's
        vae = {"block_out_channels": [vae["base_dim"] * m for m in vae["dim_mult"]], "sample_size": 256}
    if vae.get("decoder_block_out_channels"):  # AutoencoderTiny (TAESD): one width at every level
        blocks = tuple(vae["decoder_block_out_channels"])
        scale = int(vae.get("upsampling_scaling_factor", 2)) ** (len(blocks) - 1)
        decoder, encoder = Levels(blocks), Levels(tuple(vae.get("encoder_block_out_channels", blocks)))
        tile_px = 0  # light enough untiled
    else:
        blocks = tuple(vae["block_out_channels"])
        scale = 2 ** (len(blocks) - 1)
        decoder, encoder = _kl_levels(blocks, decoder=True), _kl_levels(blocks, decoder=False)
        sample = vae.get("sample_size", 512)
        tile_px = int(tile_px or (sample[0] if isinstance(sample, (list, tuple)) else sample))
    common: dict[str, Any] = dict(dtype_size=dtype_size, decode_dtype_size=decode_dtype_size or dtype_size,
                                  im2col=im2col, scale=scale, decoder=decoder, encoder=encoder, tile_px=tile_px,
                                  denoiser_bytes=denoiser_bytes)
    if unet is not None:
        levels = tuple((int(c), "CrossAttn" in kind) for c, kind in zip(unet["block_out_channels"], unet["down_block_types"]))
        layers = unet.get("layers_per_block", 2)
        return Shapes(**common, denoiser="unet", unet_levels=levels,
                      unet_layers=int(layers if isinstance(layers, int) else max(layers)))
    if dit is None:
        raise ValueError("shapes_from_configs needs a unet or a dit (transformer) config")
    return Shapes(**common, denoiser="dit", **dit_structure(dit))


def dit_structure(dit: dict[str, Any]) -> dict[str, int]:
    """A DiT transformer config's width, latent pixels per token side and text tokens: SD3 and Qwen-Image
    patch 2x2 themselves, FLUX.1 and FLUX.2 are handed packed 2x2 patches (``patch_size`` 1, 64 or 128
    input channels), Z-Image names its width ``dim`` and its patch ``all_patch_size``."""
    width = int(dit["dim"]) if "dim" in dit else int(dit["num_attention_heads"] * dit["attention_head_dim"])
    patch = dit.get("all_patch_size", [dit.get("patch_size", 2)])
    patch = int(patch[0] if isinstance(patch, (list, tuple)) else patch)
    if patch == 1 and int(dit.get("in_channels", 0)) in (64, 128):
        patch = 2
    long_text = "pooled_projection_dim" not in dit or "guidance_embeds" in dit  # all but SD3
    return {"dit_width": width, "dit_patch": patch,
            "dit_text_tokens": DIT_LONG_TEXT_TOKENS if long_text else DIT_TEXT_TOKENS}


def shapes_of(pipe: Any) -> Shapes:
    """The structure of a loaded diffusers pipeline (SD, SDXL, SD3 and the DiT families; AutoencoderKL,
    AutoencoderTiny, FLUX.2's and Qwen-Image's VAEs)."""
    import torch

    vae = pipe.vae
    unet = getattr(pipe, "unet", None)
    denoiser = unet if unet is not None else pipe.transformer
    dtype, device = denoiser.dtype, denoiser.device
    size = torch.empty((), dtype=dtype).element_size()
    # SDXL pipelines decode a float16 VAE marked force_upcast in float32
    upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False) and "XL" in type(pipe).__name__
    return shapes_from_configs(
        dict(vae.config), size, unet=dict(unet.config) if unet is not None else None,
        dit=dict(pipe.transformer.config) if unet is None else None, im2col=dtype == torch.float64 and device.type == "cpu",
        decode_dtype_size=4 if upcast else torch.empty((), dtype=vae.dtype).element_size(),
        tile_px=getattr(vae, "tile_sample_min_size", None),
        denoiser_bytes=sum(p.numel() * p.element_size() for p in denoiser.parameters()),
    )


def _conv_ratio(shapes: Shapes) -> float:
    return IM2COL_RATIO if shapes.im2col else CONV_RATIO


def _peak(values: float, largest: float, dtype_size: int) -> int:
    """A stage's peak bytes: ``values`` live at once, plus the heap's slack around its ``largest`` tensor."""
    return int(values * dtype_size + HEAP_RATIO * min(largest * dtype_size, MMAP_THRESHOLD))


def denoise_bytes(shapes: Shapes, width: int, height: int, images: int, references: int = 0) -> int:
    """One denoising step of ``images`` latents (twice the batch with classifier-free guidance);
    ``references``: reference images (of about the output's size) the DiT attends to beside each."""
    tokens = (width // shapes.scale) * (height // shapes.scale)
    if shapes.denoiser == "dit":
        patches = tokens // (shapes.dit_patch ** 2) * (1 + references)
        sequence = patches + shapes.dit_text_tokens
        largest = 4 * shapes.dit_width * sequence  # the feed-forward's hidden layer
        return _peak(DIT_RATIO * shapes.dit_width * sequence * images, largest * images, shapes.dtype_size)
    skips = shapes.unet_levels[0][0] * tokens  # conv_in's output
    working = largest = 0.0
    for level, (channels, attention) in enumerate(shapes.unet_levels):
        at = tokens / 4**level
        last = level == len(shapes.unet_levels) - 1
        skips += shapes.unet_layers * channels * at + (0 if last else channels * at / 4)
        working = max(working, (UNET_ATTENTION_RATIO if attention else UNET_RESNET_RATIO) * channels * at)
        largest = max(largest, (8 if attention else 1) * channels * at)  # GEGLU's projection: 8x the width
    values = skips + working * (_conv_ratio(shapes) / CONV_RATIO)
    return _peak(values * images, largest * images, shapes.dtype_size)


def held_bytes(shapes: Shapes) -> int:
    """What the denoiser allocates once per call, whatever the size, and holds to its end."""
    return int(max(DENOISER_HELD_SHARE * shapes.denoiser_bytes, DENOISER_HELD_FLOOR))


def tile_sizes(shapes: Shapes) -> list[int]:
    """The tile sides a tiled decode may use, largest first: the VAE's own (its sample size), then 512
    pixels (the size SD's VAE was trained at) where that is smaller. Smaller tiles blend more seams."""
    if not shapes.tile_px:
        return []
    return [shapes.tile_px] + [t for t in (SMALLEST_TILE,) if t < shapes.tile_px]


def _tiles(shapes: Shapes, width: int, height: int, tile: int) -> bool:
    """Whether decoding in ``tile`` pixel tiles really tiles this size (diffusers tiles only past one tile)."""
    return tile > 0 and max(width, height) // shapes.scale > tile // shapes.scale


def decode_bytes(shapes: Shapes, width: int, height: int, images: int, tile: int = 0) -> int:
    """Decoding ``images`` latents (all at once: callers pass 1 for a sliced VAE), in ``tile`` pixel
    tiles (0: whole)."""
    ratio = _conv_ratio(shapes)
    kept = 0
    if _tiles(shapes, width, height, tile):
        stride = int(tile // shapes.scale * 0.75)  # diffusers' overlap factor 0.25
        count = math.ceil(height / shapes.scale / stride) * math.ceil(width / shapes.scale / stride)
        kept = count * 3 * min(tile, width) * min(tile, height) + 2 * 3 * width * height  # tiles, rows, image
        width, height = min(tile, width), min(tile, height)
    largest = shapes.decoder.largest(width, height) * images
    return _peak(ratio * largest + kept * images, largest, shapes.decode_dtype_size)


def encode_bytes(shapes: Shapes, width: int, height: int, images: int, tile: int = 0) -> int:
    """Encoding ``images`` input images (edits and inpainting), in ``tile`` pixel tiles (0: whole)."""
    if _tiles(shapes, width, height, tile):
        width, height = min(tile, width), min(tile, height)
    largest = shapes.encoder.largest(width, height) * images
    return _peak((_conv_ratio(shapes) + ENCODE_EXTRA) * largest, largest, shapes.decode_dtype_size)


def estimate(shapes: Shapes, width: int, height: int, batch: int, *, guidance: bool = False, edit: bool = False,
             tile: int = 0, sliced: bool = False, controlnet: bool = False, references: int = 0) -> Estimate:
    """The peak bytes of one pipeline call of ``batch`` images of ``width`` x ``height``.

    ``guidance``: classifier-free guidance (the denoiser runs twice the batch); ``edit``: input images
    are encoded; ``tile``: the VAE decodes (and encodes) tiles of this side, in pixels (0: whole);
    ``sliced``: one image at a time; ``controlnet``: a ControlNet runs beside the denoiser (counted as
    half a denoiser more, uncalibrated); ``references``: reference images per image (reference edits:
    encoded like an edit's input, and attended to by the DiT)."""
    denoise = denoise_bytes(shapes, width, height, batch * (2 if guidance else 1), references)
    if controlnet:
        denoise = denoise * 3 // 2
    per_decode = 1 if sliced else batch
    return Estimate(
        width=width, height=height, batch=batch, tile=tile if _tiles(shapes, width, height, tile) else 0,
        held=held_bytes(shapes), denoise=denoise, encode=encode_bytes(shapes, width, height, per_decode, tile) if edit else 0,
        decode=decode_bytes(shapes, width, height, per_decode, tile),
        output=batch * 3 * width * height * (OUTPUT_BYTES_PER_VALUE + shapes.decode_dtype_size),
    )
