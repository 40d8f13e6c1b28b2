"""Patches of library internals and process tweaks, in one room, installed by one call
(``install_patches``, at the top of ``service.py``).

- ``openmp``: libgomp's spin after each parallel region (an environment variable, set before torch loads);
- ``bentoml``: BentoML 1.4.39 costs and bugs (session renewal, media types, tracing middleware,
  per-access method wrappers, request timers, the readiness probe, multipart files, client faults);
- ``starlette``: damaged forms refused (no closing boundary, text that is not UTF-8);
- ``uvicorn``: uvicorn 0.54's httptools protocol reads request headers without a size or time bound;
- ``circus``: SIGHUP to the server passed on to its workers (the keys file read again) instead of
  restarting every worker;
- ``diffusers``: diffusers 0.42's group-offloading lookup on every pipeline call;
- ``transformers``: Qwen-Image-Edit's processor built without its video processor where torchvision
  is missing (transformers 5.23 would not load it at all);
- ``torch``: symbolic shapes without "duck" sizing, for ``torch.compile`` (``T2I_COMPILE``);
- ``quiet_imports``: warnings the engine's libraries print on every import that say nothing here;
- ``gc_freeze``: the API process's start-up objects kept out of full garbage collections (called once
  the API has started, by the API service itself).

The engine's patches (diffusers, transformers, torch) run when their library is imported (``on_import``): the API
process never imports them. The text encoders' prompt de-duplication (``engine/prompt_dedupe.py``)
wraps a model's ``forward``, not a library: it has its own version guard there.

Each library patch says what it fixes, what it was measured to give, and the upstream issue where
one exists, and applies itself only to the library version it was written for
(``version_guard.written_for``); on any other version it logs one warning and changes nothing.
"""

from __future__ import annotations

from typing import Any

from t2i_core.patches import bentoml as bentoml_patches
from t2i_core.patches.circus import forward_sighup
from t2i_core.patches import diffusers as diffusers_patches
from t2i_core.patches import torch as torch_patches
from t2i_core.patches import transformers as transformers_patches
from t2i_core.patches.on_import import when_imported
from t2i_core.patches.openmp import shorten_openmp_spin
from t2i_core.patches.quiet_imports import quiet_library_warnings
from t2i_core.patches.starlette import strict_form_parsing
from t2i_core.patches.uvicorn import bound_request_headers


def install_patches(settings: Any) -> None:
    """Every patch, once per process (``settings``: the server's ``Settings``). Call it before torch is
    imported (libgomp reads its spin setting when it loads)."""
    shorten_openmp_spin()
    quiet_library_warnings()
    bentoml_patches.memoize_media_types()
    bentoml_patches.trace_only_when_exported()
    bentoml_patches.cache_local_callers()
    bentoml_patches.cancel_request_timers()
    bentoml_patches.engine_not_ready_is_503()
    bentoml_patches.strict_multipart_files()
    bentoml_patches.client_faults_are_4xx()
    strict_form_parsing()
    bound_request_headers(settings.max_header_bytes, settings.header_timeout_s)
    forward_sighup()
    when_imported(diffusers_patches.HOOKS_MODULE, lambda _: diffusers_patches.skip_group_offload_lookup_until_used())
    when_imported(transformers_patches.PROCESSING_MODULE, transformers_patches.video_processor_optional)
    if settings.compile:
        when_imported(torch_patches.CONFIG_MODULE, torch_patches.no_duck_shapes)
