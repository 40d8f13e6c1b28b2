"""Inpainting masks: decoded to 8-bit pixels at the output size, 255 where the image is repainted.

White means repaint (A1111, diffusers, Cog). On the OpenAI route a mask with an alpha channel follows
OpenAI's convention instead: fully transparent pixels are repainted. A mask of another size than the
output is resized to it (so a mask drawn on the original image fits after the image is resized).
"""

from __future__ import annotations

from PIL import Image

from t2i_core.api.images.codecs import has_alpha, open_image
from t2i_core.common.errors import InvalidRequest

#: pixels at or above this value are repainted (diffusers binarizes the mask at one half)
REPAINT_LEVEL = 128


def decode_mask(data: bytes, width: int, height: int, *, max_pixels: int, transparent_repaints: bool = False,
                field: str = "mask") -> bytes:
    """The mask as ``width * height`` bytes (255 = repaint); InvalidRequest when it cannot be read or
    marks nothing to repaint."""
    img = open_image(data, max_pixels=max_pixels, field=field)
    if transparent_repaints and has_alpha(img):
        mask = img.convert("RGBA").getchannel("A").point(lambda a: 255 if a == 0 else 0)
        rule = "fully transparent pixels are repainted"
    else:
        mask = img.convert("L")
        rule = "white pixels are repainted"
    if mask.size != (width, height):
        mask = mask.resize((width, height), Image.Resampling.NEAREST)
    low, high = mask.getextrema()
    if high < REPAINT_LEVEL:
        raise InvalidRequest(
            f"{field} marks nothing to repaint ({rule}; the brightest value is {high}, "
            f"repainting needs at least {REPAINT_LEVEL})", param=field,
        )
    return mask.tobytes()
