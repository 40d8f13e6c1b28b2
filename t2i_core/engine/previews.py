"""Partial images: real intermediate decodes of a request's latents while its batch denoises (OpenAI's
``stream: true`` with ``partial_images``; live previews).

Only the rows of the requests that asked are decoded, at steps spread evenly over the run. By default
(``T2I_PREVIEW_DECODE=approx``) a partial image is the latents' linear projection to RGB (the "latent
to RGB" factors of each family, as ComfyUI's and A1111's cheap previews use), at the latents'
resolution scaled up to the image's size: a blurry but real view of the image on its way, that costs
the batch nothing measurable. ``vae`` decodes with the model's VAE (a model whose registry entry names
a ``tiny_vae`` decodes with it) for sharper partial images, which the batch-mates wait for. Steps:
``partial_images`` P over S steps gives the steps round(k * S / (P + 1)) for k = 1..P (fewer when
there are fewer steps than that, as OpenAI allows). The batch-mates' images do not change. A running request's latents can also be decoded on
demand after its next step (``Engine.want_preview``: the task progress route's ``preview=1``).
"""

from __future__ import annotations

from typing import Any



def preview_steps(partial_images: int, steps: int) -> list[int]:
    """The 1-based steps after which a request asking for ``partial_images`` gets one (the final
    image comes after the last step, so it is never a preview step)."""
    if partial_images <= 0 or steps <= 1:
        return []
    chosen = {round(k * steps / (partial_images + 1)) for k in range(1, partial_images + 1)}
    return sorted(s for s in chosen if 1 <= s < steps)


#: latent channels -> RGB (and bias), per family (ComfyUI's ``latent_rgb_factors``); applied to the
#: denoiser's latents, mapped from [-1, 1] to [0, 1]
LATENT_RGB: dict[str, tuple[list[list[float]], list[float]]] = {
    "sd": ([[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721],
            [-0.2120, -0.2616, -0.7177]], [0.0, 0.0, 0.0]),
    "sdxl": ([[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362],
              [-0.3165, -0.2492, -0.2188]], [0.1084, -0.0175, -0.0011]),
    "sd3": ([[-0.0922, -0.0175, 0.0749], [0.0311, 0.0633, 0.0954], [0.1994, 0.0927, 0.0458],
             [0.0856, 0.0339, 0.0902], [0.0587, 0.0272, -0.0496], [-0.0006, 0.1104, 0.0309],
             [0.0978, 0.0306, 0.0427], [-0.0042, 0.1038, 0.1358], [-0.0194, 0.0020, 0.0669],
             [-0.0488, 0.0130, -0.0268], [0.0922, 0.0988, 0.0951], [-0.0278, 0.0524, -0.0542],
             [0.0332, 0.0456, 0.0895], [-0.0069, -0.0030, -0.0810], [-0.0596, -0.0465, -0.0293],
             [-0.1448, -0.1463, -0.1189]], [0.2394, 0.2135, 0.1925]),
    # the FLUX.1 VAE's latents (FLUX.1, Kontext, Z-Image)
    "flux": ([[-0.0346, 0.0244, 0.0681], [0.0034, 0.0210, 0.0687], [0.0275, -0.0668, -0.0433],
              [-0.0174, 0.0160, 0.0617], [0.0859, 0.0721, 0.0329], [0.0004, 0.0383, 0.0115],
              [0.0405, 0.0861, 0.0915], [-0.0236, -0.0185, -0.0259], [-0.0245, 0.0250, 0.1180],
              [0.1008, 0.0755, -0.0421], [-0.0515, 0.0201, 0.0011], [0.0428, -0.0012, -0.0036],
              [0.0817, 0.0765, 0.0749], [-0.1264, -0.0522, -0.1103], [-0.0280, -0.0881, -0.0499],
              [-0.1262, -0.0982, -0.0778]], [-0.0329, -0.0718, -0.0851]),
    # the Wan 2.1 VAE's normalized latents (Qwen-Image's VAE)
    "qwen": ([[-0.1299, -0.1692, 0.2932], [0.0671, 0.0406, 0.0442], [0.3568, 0.2548, 0.1747],
              [0.0372, 0.2344, 0.1420], [0.0313, 0.0189, -0.0328], [0.0296, -0.0956, -0.0665],
              [-0.3477, -0.4059, -0.2925], [0.0166, 0.1902, 0.1975], [-0.0412, 0.0267, -0.1364],
              [-0.1293, 0.0740, 0.1636], [0.0680, 0.3019, 0.1128], [0.0032, 0.0581, 0.0639],
              [-0.1251, 0.0927, 0.1699], [0.0060, -0.0633, 0.0005], [0.3477, 0.2275, 0.2950],
              [0.1984, 0.0913, 0.1861]], [-0.1835, -0.0868, -0.3360]),
}
#: VAE classes whose decode is ``vae.decode(latents / scaling_factor + shift_factor)`` (``decode_rows``)
PLAIN_VAES = ("AutoencoderKL", "AutoencoderTiny")


def latent_family(pipe: Any, channels: int) -> str | None:
    """Whose latent-to-RGB factors fit ``pipe``'s latents (``channels`` of them), by its class."""
    name = type(pipe).__name__
    if channels == 16 and name.startswith(("Flux", "ZImage")) and not name.startswith("Flux2"):
        return "flux"
    if channels == 16 and name.startswith("QwenImage"):
        return "qwen"
    if channels == 16:
        return "sd3"
    if channels == 4:
        return "sdxl" if "XL" in name else "sd"
    return None


def spatial_latents(pipe: Any, latents: Any, width: int, height: int) -> Any:
    """The step's latents as (rows, channels, h, w): the DiT pipelines pack them into sequences of 2x2
    patches (FLUX.1, Kontext, Qwen-Image), unpacked here with the pipeline's own ``_unpack_latents``;
    None where they cannot be (FLUX.2's latents need their position ids)."""
    if latents.ndim == 4:
        return latents
    unpack = getattr(pipe, "_unpack_latents", None)
    if latents.ndim != 3 or unpack is None:
        return None
    spatial = unpack(latents, height, width, getattr(pipe, "vae_scale_factor", 8))
    if spatial.ndim == 5:  # Qwen-Image's video-style VAE: one frame
        spatial = spatial[:, :, 0]
    return spatial if spatial.ndim == 4 else None


def preview_rows(pipe: Any, latents: Any, rows: list[int], width: int, height: int,
                 approximate: bool = True) -> list[tuple[bytes, int, int]] | None:
    """Partial images of ``latents[rows]`` (a ``width`` x ``height`` call): projected to RGB
    (``approximate``, or where the VAE's decode is not the plain one) or decoded by the VAE; None when
    these latents cannot be shown (no partial image is made)."""
    spatial = spatial_latents(pipe, latents, width, height)
    if spatial is None:
        return None
    plain = type(getattr(pipe, "vae", None)).__name__ in PLAIN_VAES
    if approximate or not plain:
        found = approximate_rows(pipe, spatial, rows)
        if found is not None or not plain:
            return found
    return decode_rows(pipe, spatial, rows)


def approximate_rows(pipe: Any, latents: Any, rows: list[int]) -> list[tuple[bytes, int, int]] | None:
    """RGB bytes, width, height of ``latents[rows]`` projected to RGB and scaled up to the image size;
    None when the latents are of no known family (then the VAE decodes them)."""
    import numpy as np
    from PIL import Image

    family = latent_family(pipe, latents.shape[1])
    if family is None or latents.ndim != 4:
        return None
    factors, bias = LATENT_RGB[family]
    chosen = latents[rows].float().cpu().numpy()  # rows x C x h x w
    rgb = np.einsum("nchw,cr->nhwr", chosen, np.asarray(factors, np.float32)) + np.asarray(bias, np.float32)
    array = ((rgb + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)
    scale = getattr(pipe, "vae_scale_factor", 8)
    out = []
    for image in array:
        height, width = image.shape[0] * scale, image.shape[1] * scale
        big = Image.fromarray(image, "RGB").resize((width, height), Image.Resampling.BILINEAR)
        out.append((big.tobytes(), width, height))
    return out


def decode_rows(pipe: Any, latents: Any, rows: list[int]) -> list[tuple[bytes, int, int]]:
    """RGB bytes, width, height of ``latents[rows]`` decoded as the pipeline decodes its final image."""
    import numpy as np
    import torch

    vae = pipe.vae
    chosen = latents[rows].to(vae.dtype)
    scale = getattr(vae.config, "scaling_factor", 1.0) or 1.0
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    with torch.inference_mode():
        decoded = vae.decode(chosen / scale + shift, return_dict=False)[0]
    images = pipe.image_processor.postprocess(decoded, output_type="np")
    array = (np.asarray(images) * 255.0).round().clip(0, 255).astype(np.uint8)
    return [(np.ascontiguousarray(a).tobytes(), a.shape[1], a.shape[0]) for a in array]


