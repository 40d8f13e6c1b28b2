"""What the native BentoML routes (``/generate``, ``/edit``, the task route, defined in service.py)
need beyond the shared request models: the edit upload's input model and the answer of a route.

The request fields are the shared ``GenerateRequest`` / ``EditRequest`` (``input_spec``), so the
native routes, the task route and the other surfaces cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Awaitable

from pydantic import BeforeValidator, Field
from starlette.responses import Response

from t2i_core.api.rendered_image import RenderedImage
from t2i_core.api.error_shapes import error_response, native
from t2i_core.api.responses import base64_image, image_response
from t2i_core.common.errors import T2IError
from t2i_core.common.schemas import EditRequest

#: a multipart file, or base64 text in JSON (decoded to bytes before validation)
ImageUpload = Annotated[Path, BeforeValidator(base64_image)]


class EditUpload(EditRequest):
    """``/edit``'s input: the edit's fields and the image, with an inpainting mask and a ControlNet's
    control image when wanted (each a multipart file or base64 in JSON)."""

    image: ImageUpload
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
