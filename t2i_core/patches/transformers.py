"""Workarounds for transformers 5.23 found by loading the Qwen-Image-Edit pipelines.

- ``video_processor_optional``: ``Qwen2VLProcessor`` (the processor that feeds input images to
  Qwen-Image-Edit's text encoder) is built with an image processor *and* a video processor, and
  transformers 5.23's video processors need torchvision. torchvision cannot be installed beside a CPU
  build of torch from PyPI (its wheels there pull a CUDA torch), so on such a machine the edit
  pipelines could not load at all, although they never use the video processor: only images go
  through it. Where torchvision is missing, the processor is built without one
  (``_LazyAutoProcessorMapping.__getitem__`` gives a stand-in whose ``from_pretrained`` returns None,
  and ``ProcessorMixin.check_argument_for_proper_class`` accepts None for it); the image path stays
  transformers' own. With torchvision installed nothing changes.

Applied only on transformers ``WRITTEN_FOR`` (``version_guard``); elsewhere it warns once and changes nothing.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from t2i_core.common.version_guard import written_for

WRITTEN_FOR = "5.23"
#: the module whose import installs the patch (``install_patches``)
PROCESSING_MODULE = "transformers.processing_utils"
VIDEO = "video_processor"


class NoVideoProcessor:
    """Stands in for ``AutoVideoProcessor`` where torchvision is missing: loads nothing."""

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> None:
        return None


def video_processor_optional(processing: ModuleType | None = None) -> bool:
    """Install the patch on ``transformers.processing_utils`` (imported when not given); True when
    the processors now load without a video processor."""
    if not written_for("transformers", WRITTEN_FOR, "video_processor_optional"):
        return False
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        return False
    if processing is None:
        import transformers.processing_utils as processing
    mapping, mixin = processing._LazyAutoProcessorMapping, processing.ProcessorMixin
    if getattr(mapping.__getitem__, "_t2i_patched", False):
        return True
    lookup, check = mapping.__getitem__, mixin.check_argument_for_proper_class

    def getitem(self: Any, key: str) -> Any:
        return NoVideoProcessor if key == VIDEO else lookup(self, key)

    def check_argument(self: Any, argument_name: str, argument: Any) -> Any:
        if argument_name == VIDEO and argument is None:
            return None
        return check(self, argument_name, argument)

    getitem._t2i_patched = True  # type: ignore[attr-defined]
    mapping.__getitem__ = getitem  # type: ignore[method-assign]
    mixin.check_argument_for_proper_class = check_argument  # type: ignore[method-assign]
    return True
