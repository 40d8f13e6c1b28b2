"""The raw pixel format that crosses from the API to the engine and back: RGB bytes, row-major,
width * height * 3 (no encoding cost on either side of the process boundary)."""

from __future__ import annotations

from PIL import Image


def to_rgb_pixels(img: Image.Image, width: int, height: int) -> bytes:
    """Raw RGB bytes of ``img`` resized to width x height."""
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.LANCZOS)
    return img.convert("RGB").tobytes()


def from_rgb_pixels(pixels: bytes, width: int, height: int) -> Image.Image:
    return Image.frombytes("RGB", (width, height), pixels)
