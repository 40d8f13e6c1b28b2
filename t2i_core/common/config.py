"""Settings read from the environment, with documented defaults.

Every knob has a ``T2I_*`` environment variable. Nothing here imports torch or diffusers, so
``import service`` and ``bentoml build`` stay fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Callable


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer; got {raw!r}") from None


def _str(name: str, default: str) -> str:
    raw = os.environ.get(name)
    return default if raw is None or raw.strip() == "" else raw.strip()


@dataclass(frozen=True)
class Settings:
    #: Model served when a request names none: a registry id, or "auto" (sd-turbo when its weights are
    #: in the local Hugging Face cache, else the built-in tiny model). Unset: the registry file's default.
    model: str = ""
    #: "auto" (cuda, then mps, then cpu) or a torch device string such as "cuda:1".
    device: str = "auto"
    #: "auto" (cuda: bfloat16 where supported else float16; mps: float16; cpu: the registry entry's
    #: ``cpu_dtype``, and for "auto" there the CPU fast path below) or one of float32, float16, bfloat16, float64.
    dtype: str = "auto"
    #: The CPU fast path, for models whose registry entry leaves the CPU dtype to the server
    #: (``cpu_dtype: "auto"``) when ``T2I_DTYPE`` is auto: "auto" runs them in bfloat16 where the CPU
    #: computes bfloat16 natively (x86 AMX or AVX512-BF16, Arm BF16; read from /proc/cpuinfo) and in
    #: float32 elsewhere (bfloat16 without those instructions is slower than float32); "on": bfloat16
    #: always; "off": float32 always. See t2i_core/engine/devices.py.
    cpu_bf16: str = "auto"
    #: Most images the engine runs in one batch, and the batching deadline (BentoML answers 503 when it
    #: predicts a queued request cannot start within it, so keep it generous).
    max_batch_size: int = 16
    max_latency_ms: int = 60_000
    #: Seconds a request may take end to end (BentoML's traffic timeout).
    request_timeout_s: int = 120
    #: Input images: most pixels (width * height, read from the header before decoding).
    max_input_pixels: int = 4096 * 4096
    #: CPU threads torch may use in the engine (0: torch's default, one per core).
    torch_threads: int = 0
    #: Engine workers (processes), each pinned to its own GPU: 0 means one per visible GPU (one on a
    #: machine without a GPU). Several workers on CPU split the cores between them.
    engine_workers: int = 0
    #: API worker processes (HTTP, validation, image encoding); several share the engine. With more than
    #: one, "url" images must be in a shared store (``image_store``; "auto" sees to it). Task results are
    #: shared already: BentoML keeps them in one file per server.
    api_workers: int = 1
    #: Load the default model when the engine starts (1) or on first use (0).
    preload: int = 1
    #: Bytes of accelerator memory (RAM on CPU) that loaded models and the activations of the batch in
    #: progress may take. Loading past it unloads the least recently used idle models first; a batch
    #: whose estimated activations do not fit what is left runs in parts, or decodes in tiles, or is
    #: refused (422 image_too_large) when one image never fits (t2i_core/engine/admission.py). 0: 85% of
    #: the GPU's memory; on CPU, 75% of the RAM or of the container's memory limit (cgroup), the smaller.
    memory_budget_bytes: int = 0
    #: Key for the admin API (Authorization: Bearer <key>); the admin API is disabled when unset.
    admin_key: str = ""
    #: Merge concurrent requests into fewer engine calls in the API process: at most this many calls in
    #: flight, the rest wait and go together (0: every request is its own engine call).
    coalesce: int = 1
    #: After an engine call of 2+ images returns, wait up to this many ms for the clients it answered to
    #: send again before the next call (fuller batches under load; 0: send at once). See coalesce.py.
    coalesce_linger_ms: int = 25
    #: Processes that encode output images beside each API worker's event loop (-1: one per CPU beyond
    #: the first, at most 8; 0: in the API process, small images on the event loop, larger on threads).
    encode_processes: int = -1
    #: Largest request body in bytes (413 beyond; checked from Content-Length before reading).
    max_body_bytes: int = 50 * 1024 * 1024
    #: Write the generation parameters (prompt, negative prompt, steps, sampler, guidance, seed, size,
    #: model) into each output image, as the A1111 web UI does (0: leave them out; the prompt is in the file).
    image_parameters: int = 1
    #: Seconds a generation request's body may take to arrive (408 beyond); it counts against
    #: ``max_in_flight`` only once it has arrived.
    body_timeout_s: int = 60
    #: Largest request line + headers in bytes (431 beyond) and seconds for them to arrive (408 beyond).
    max_header_bytes: int = 64 * 1024
    header_timeout_s: int = 10
    #: Generation requests in flight beyond which new ones are refused at once (429 + Retry-After).
    max_in_flight: int = 256
    #: Seconds a refused client is told to wait (Retry-After).
    retry_after_s: int = 1
    #: API keys, comma-separated: when set, generation routes need "Authorization: Bearer <key>".
    api_keys: str = ""
    #: CORS origins, comma-separated ("*" for any, then without credentials); unset: CORS off.
    cors_origins: str = ""
    #: Test-only fault injection: raise CUDA out-of-memory for engine batches above this many images
    #: (-1: off). Exercises the split-and-retry path on machines without a GPU.
    fault_oom_above: int = -1
    #: Most images one request may ask for (OpenAI's ``n``).
    max_images_per_request: int = 8
    #: ``response_format: "url"``: seconds an image stays downloadable, and the store's size in bytes.
    image_url_ttl_s: int = 3600
    image_store_max_bytes: int = 256 * 1024 * 1024
    #: Where those images are kept: "memory" (this API process only), "dir:<folder>", a folder shared by
    #: API workers, server processes or replicas (a shared volume), or "fsspec:<url>", an object store
    #: such as "fsspec:s3://bucket/prefix" (any fsspec file system; S3 through s3fs): a link made by one
    #: is served by all. "auto": memory with one API worker, a folder in the server's run folder with more.
    image_store: str = "auto"
    #: The base of those links, e.g. "https://images.example.com" behind a proxy or ingress; empty: the
    #: URL each request came to (its Host header).
    public_url: str = ""
    #: Tasks (/tasks/generate): seconds a finished task's result is kept in BentoML's task store (0: only
    #: BentoML's own 24 h limit), the most bytes the store's data may take (the oldest finished go
    #: first; 0: no cap), and seconds between checks in the API process (0: neither limit is applied).
    #: See t2i_core/api/surfaces/tasks/retention.py.
    task_result_ttl_s: int = 3600
    task_store_max_bytes: int = 256 * 1024 * 1024
    task_store_check_s: int = 60
    #: How partial images and live previews are decoded: "approx" (the latents projected to RGB, scaled up:
    #: blurry, costs the batch nothing measurable) or "vae" (the model's VAE: sharp, its batch-mates wait
    #: for each decode). See t2i_core/engine/previews.py.
    preview_decode: str = "approx"
    #: Put prompts and negative prompts in the per-request log lines (1); off by default (0).
    log_prompts: int = 0
    #: GPU speed options (see t2i_core/engine/speedups.py), off by default: channels-last memory format, fused
    #: QKV projections, torch.compile of the denoiser with warm-up at startup for these sizes
    #: ("512x512,768x768"; empty: the default model's size).
    channels_last: int = 0
    fuse_qkv: int = 0
    compile: int = 0
    warmup_sizes: str = ""

    def __post_init__(self) -> None:
        if self.public_url and not self.public_url.startswith(("http://", "https://")):
            raise ValueError(f"T2I_PUBLIC_URL must start with http:// or https://; got {self.public_url!r}")

    @classmethod
    def from_env(cls) -> "Settings":
        readers: dict[str, Callable[[str, object], object]] = {}
        values: dict[str, object] = {}
        for f in fields(cls):
            env = f"T2I_{f.name.upper()}"
            reader = _int if isinstance(f.default, int) else _str
            readers[env] = reader
            values[f.name] = reader(env, f.default)  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]
