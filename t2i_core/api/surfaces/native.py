"""What the native BentoML routes (``/generate``, ``/edit``, the task route, defined in service.py)
need beyond the shared request models: the edit upload's input model and the answer of a route.

The request fields are the shared ``GenerateRequest`` / ``EditRequest`` (``input_spec``), so the
native routes, the task route and the other surfaces cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Awaitable

from pydantic import BeforeValidator, Field, ValidationInfo
from starlette.responses import Response

from t2i_core.api.rendered_image import RenderedImage
from t2i_core.api.error_shapes import error_response, native
from t2i_core.api.responses import base64_image, image_response
from t2i_core.common.errors import T2IError
from t2i_core.common.schemas import EditRequest

#: a multipart file, or base64 text in JSON (decoded to bytes before validation)
ImageUpload = Annotated[Path, BeforeValidator(base64_image)]
#: the most input images one edit may send (a model takes up to its own limit, ``edits.max_images``)
MAX_EDIT_IMAGES = 16


def one_or_more_images(value: Any, info: ValidationInfo) -> Any:
    """Before-validator of a list of image fields that also takes a single one (as before); base64 text
    is decoded here, so that an error names the field, not its position in the list."""
    return [base64_image(v, info) for v in (value if isinstance(value, list) else [value])]


class EditUpload(EditRequest):
    """``/edit``'s input: the edit's fields and the image (or several: the reference images of an
    instruction edit model that takes them), with an inpainting mask and a ControlNet's control image when
    wanted (each a multipart file or base64 in JSON)."""

    image: Annotated[list[ImageUpload], BeforeValidator(one_or_more_images)] = Field(
        min_length=1, max_length=MAX_EDIT_IMAGES,
        description="The image to edit; several (repeated multipart parts, or a JSON list) for models that take "
                    "several reference images.")
    # ``ImageUpload | None`` would be the honest type, but BentoML 1.4's file fields cannot sit in a
    # Union (its FileSchema marker is unhashable); an unset field keeps its default, None, unvalidated
    mask: ImageUpload = Field(default=None, description="Inpainting: white where the image is repainted, "
                                     "resized to the output size.")
    control_image: ImageUpload = Field(default=None, validate_default=True, description="The ControlNet's image, used as given.")


def upload_bytes(value: Path | bytes | None) -> bytes | None:
    """An upload's bytes (a multipart file's temporary path, or bytes from base64)."""
    if value is None:
        return None
    return value if isinstance(value, bytes) else Path(value).read_bytes()


def uploads_bytes(values: list[Path | bytes] | Path | bytes | None) -> list[bytes]:
    """The bytes of each upload of a list field (``EditUpload.image``)."""
    if values is None:
        return []
    return [upload_bytes(v) or b"" for v in (values if isinstance(values, list) else [values])]


async def answer(ctx: Any, work: Awaitable[list[RenderedImage]]) -> Response:
    """The route's image, or its error in the native shape. BentoML applies
    ``ctx.response.status_code`` to whatever a route that takes ``ctx`` returns, so it is set here."""
    try:
        (image,) = await work
        response = image_response(image)
    except T2IError as err:
        response = error_response(err, native)
    ctx.response.status_code = response.status_code
    return response
