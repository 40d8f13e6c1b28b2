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
}


def approximate_rows(pipe: Any, latents: Any, rows: list[int]) -> list[tuple[bytes, int, int]] | None:
    """RGB bytes, width, height of ``latents[rows]`` projected to RGB and scaled up to the image size;
    None when the latents are of no known family (then the VAE decodes them)."""
    import numpy as np
    from PIL import Image

    channels = latents.shape[1]
    family = "sd3" if channels == 16 else ("sdxl" if "XL" in type(pipe).__name__ else "sd") if channels == 4 else None
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


