"""Settings read from the environment, with documented defaults.

Every knob has a ``T2I_*`` environment variable. Nothing here imports torch or diffusers, so
``import service`` and ``bentoml build`` stay fast.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields

from urllib.parse import urlsplit

from t2i_core.state.open import check_spec

DTYPES = ("float32", "float16", "bfloat16", "float64")
CPU_BF16_MODES = ("auto", "on", "off")
PREVIEW_DECODERS = ("approx", "vae")
CPU_BACKENDS = ("auto", "openvino", "torch")
#: "auto", or a torch device the engine can run on: cpu, mps, cuda or xpu, with an optional index
DEVICE = re.compile(r"auto|cpu|mps|(cuda|xpu)(:\d+)?")
#: the least value of each integer setting (0 or 1 for the switches); the others take 0 and up
LEAST = {
    "max_batch_size": 1, "max_latency_ms": 1, "request_timeout_s": 1, "max_input_pixels": 1, "api_workers": 1,
    "max_body_bytes": 1, "body_timeout_s": 1, "max_header_bytes": 1, "header_timeout_s": 1, "max_in_flight": 1,
    "max_images_per_request": 1, "image_url_ttl_s": 1, "encode_processes": -1, "fault_oom_above": -1,
    "webhook_timeout_s": 1, "webhook_attempts": 1, "webhook_backoff_ms": 1, "idempotency_ttl_s": 1,
}
SWITCHES = ("preload", "image_parameters", "log_prompts", "channels_last", "fuse_qkv", "compile", "fair_share")


class SettingsError(ValueError):
    """A ``T2I_*`` setting that cannot be used; the message names the variable, the value and what it may be."""


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"environment variable {name} must be an integer; got {raw!r}") from None


def _str(name: str, default: str) -> str:
    raw = os.environ.get(name)
    return default if raw is None or raw.strip() == "" else raw.strip()


@dataclass(frozen=True)
class Settings:
    #: Model served when a request names none: a registry id, or "auto" (sd-turbo when its weights are
    #: in the local Hugging Face cache, else the built-in tiny model). Unset: the registry file's default.
    model: str = ""
    #: "auto" (cuda, then mps, then cpu) or a torch device: cpu, mps, cuda or xpu, with an optional
    #: index such as "cuda:1".
    device: str = "auto"
    #: "auto" (cuda: bfloat16 where supported else float16; mps: float16; cpu: the registry entry's
    #: ``cpu_dtype``, and for "auto" there the CPU fast path below; the tiny test models: float64, so that
    #: an image is bit-identical whatever its batch) or one of float32, float16, bfloat16, float64.
    dtype: str = "auto"
    #: The CPU fast path, for models whose registry entry leaves the CPU dtype to the server
    #: (``cpu_dtype: "auto"``) when ``T2I_DTYPE`` is auto: "auto" runs them in bfloat16 where the CPU
    #: computes bfloat16 natively (x86 AMX or AVX512-BF16, Arm BF16; read from /proc/cpuinfo) and in
    #: float32 elsewhere (bfloat16 without those instructions is slower than float32); "on": bfloat16
    #: always; "off": float32 always. See t2i_core/engine/devices.py.
    cpu_bf16: str = "auto"
    #: What runs a model's text encoder, denoiser and VAE decoder on the CPU: "torch", or "openvino"
    #: (converted once to OpenVINO, kept on disk under ``$T2I_CACHE_DIR/openvino`` so a restart does not
    #: convert again; float32 only; Stable Diffusion 1.x/2.x models, the others stay in torch), or "auto":
    #: OpenVINO where it applies (the ``openvino`` package is installed, the device is the CPU, the model
    #: is one of those families in float32, and no torch speed option below is on) and torch elsewhere.
    #: Each model's backend is logged and shown in the model listing. See t2i_core/engine/cpu_backend.py.
    cpu_backend: str = "auto"
    #: Most images the engine runs in one batch, and the batching deadline (BentoML answers 503 when it
    #: predicts a queued request cannot start within it, so keep it generous). A batch size of 1 turns
    #: adaptive batching off: each engine call then serves one request's images, one call at a time.
    max_batch_size: int = 16
    max_latency_ms: int = 60_000
    #: Seconds a request may take end to end: past it the answer is a 504 and the engine stops that
    #: request's work. BentoML's own traffic timeout is set 30 s above it, so that this one answers first.
    request_timeout_s: int = 120
    #: Input images (``/edit`` and the other image-to-image routes): most pixels (width * height, read
    #: from the header before decoding; 400 beyond).
    max_input_pixels: int = 4096 * 4096
    #: CPU threads torch may use in the engine (0: torch's default, one per core).
    torch_threads: int = 0
    #: Engine workers (processes), each pinned to its own GPU: 0 means one per visible GPU (one on a
    #: machine without a GPU). Several workers on CPU split the cores between them.
    engine_workers: int = 0
    #: API worker processes (HTTP, validation, image encoding); several share the engine. With more than
    #: one, "url" images must be in a shared store (``image_store``; "auto" sees to it), and so must tasks
    #: (``state``; "auto" sees to it too).
    api_workers: int = 1
    #: Load the default model when the engine starts (1) or on first use (0).
    preload: int = 1
    #: Bytes of accelerator memory (RAM on CPU) that loaded models and the activations of the batch in
    #: progress may take. Loading past it unloads the least recently used idle models first; a batch
    #: whose estimated activations do not fit what is left runs in parts, or decodes in tiles, or is
    #: refused (422 image_too_large) when one image never fits (t2i_core/engine/admission.py). 0: 85% of
    #: the GPU's memory; on CPU, 90% of the RAM or of the container's memory limit (cgroup), the smaller
    #: (every batch is also checked against the memory free now).
    memory_budget_bytes: int = 0
    #: Key for the admin API (Authorization: Bearer <key>); the admin API is disabled when unset.
    admin_key: str = ""
    #: Merge concurrent requests into fewer engine calls in the API process: at most this many calls in
    #: flight, the rest wait and go together (0: every request is its own engine call).
    coalesce: int = 1
    #: After an engine call of 2+ images returns, wait up to this many ms for the clients it answered to
    #: send again (as many images as it carried, plus those already waiting) before the next call (fuller
    #: batches under load; 0: send at once). An idle server sends at once. See t2i_core/api/coalesce.py.
    coalesce_linger_ms: int = 25
    #: Processes that encode output images beside each API worker's event loop (-1: one per CPU beyond
    #: the first, at most 8; 0: in the API process, small images on the event loop, larger on threads).
    #: The processes run ``python -m t2i_core.api.images.encoder_process``, start on first use and are
    #: replaced if one dies; no image is lost: without a worker it is encoded in the API process.
    encode_processes: int = -1
    #: Largest request body in bytes (413 beyond; checked from Content-Length before reading, and a
    #: chunked body as soon as it passes it).
    max_body_bytes: int = 50 * 1024 * 1024
    #: Write the generation parameters (prompt, negative prompt, steps, sampler, guidance, seed, size,
    #: model) into each output image, as the A1111 web UI does (0: leave them out; the prompt is in the file).
    image_parameters: int = 1
    #: Seconds a generation request's body may take to arrive (408 beyond); it counts against
    #: ``max_in_flight`` only once it has arrived.
    body_timeout_s: int = 60
    #: Largest request line + headers in bytes (431 beyond) and seconds for them to arrive (408 beyond; a
    #: connection that sends nothing is closed after that time too).
    max_header_bytes: int = 64 * 1024
    header_timeout_s: int = 10
    #: Generation requests in flight beyond which new ones are refused at once (429 + Retry-After); a
    #: request counts once its body has arrived.
    max_in_flight: int = 256
    #: Seconds a refused client is told to wait (Retry-After).
    retry_after_s: int = 1
    #: API keys, comma-separated: when set, generation routes need "Authorization: Bearer <key>". Each
    #: is named "key-<first 8 hex digits of its SHA-256>" in logs, metrics and usage.
    api_keys: str = ""
    #: The keys file (YAML or JSON): per key a name, its SHA-256 (never the key), a role (admin / user),
    #: a priority class (interactive / batch), a weight, optional limits (images per minute, requests in
    #: flight) and a default webhook; read again on SIGHUP or POST /admin/keys/reload. With it, generation
    #: routes need a key. See docs/jobs.md.
    api_keys_file: str = ""
    #: Fair share: the next work sent to the engine is chosen by weighted fair queueing across key names,
    #: interactive before batch (1), or first come, first served (0). See docs/jobs.md.
    fair_share: int = 1
    #: With fair share, the most images an engine call of batch-class work carries while interactive
    #: work is waiting, running or was sent in the last 2 s (0: the batch size). A running batch is
    #: never interrupted: this bounds what an interactive request waits for during a flood, at the cost
    #: of the flood's batching while interactive callers are there. See docs/jobs.md.
    fair_batch_images: int = 4
    #: The default webhook signing secret ("whsec_" + base64, Standard Webhooks), for keys whose entry
    #: has no webhook_secret (and servers without keys); without one, a webhook is refused at submit.
    webhook_secret: str = ""
    #: Addresses a webhook may go to although they are loopback, private, link-local or otherwise not
    #: public (refused by default: no server-side request forgery), comma-separated IPs or networks,
    #: e.g. "127.0.0.1" or "10.0.0.0/8".
    webhook_allow: str = ""
    #: Webhook delivery: seconds one attempt may take (connect and answer), attempts in all, the first
    #: retry's delay in ms (doubled at each retry: 1, 2, 4, 8, 16 s by default), and the least seconds
    #: between two "progress" events of a task.
    webhook_timeout_s: int = 5
    webhook_attempts: int = 6
    webhook_backoff_ms: int = 1000
    webhook_progress_s: int = 2
    #: Idempotency-Key: seconds the first answer to a key is kept (a retry with the same key and body
    #: within it gets that answer again, without a second generation), and the bytes the kept answers
    #: may take in all (past it the oldest are dropped first; 0: the header is ignored).
    idempotency_ttl_s: int = 3600
    idempotency_max_bytes: int = 256 * 1024 * 1024
    #: CORS origins, comma-separated ("*" for any, then without credentials); unset: CORS off.
    cors_origins: str = ""
    #: Test-only fault injection: raise CUDA out-of-memory for engine batches above this many images
    #: (-1: off). Exercises the split-and-retry path on machines without a GPU.
    fault_oom_above: int = -1
    #: Most images one request may ask for (OpenAI's ``n``).
    max_images_per_request: int = 8
    #: ``response_format: "url"``: seconds an image stays downloadable (its link answers 410 after), and
    #: the bytes the store keeps (the oldest images dropped first).
    image_url_ttl_s: int = 3600
    image_store_max_bytes: int = 256 * 1024 * 1024
    #: Where those images are kept: "memory" (this API process only), "state" (the shared state,
    #: ``T2I_STATE``: with Redis, every replica serves every link), "dir:<folder>", a folder shared by
    #: API workers, server processes or replicas (a shared volume), or "fsspec:<url>", an object store
    #: such as "fsspec:s3://bucket/prefix" (any fsspec file system; S3 through s3fs): a link made by one
    #: is served by all. S3 credentials and endpoint come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
    #: AWS_ENDPOINT_URL. "auto": the shared state when it is Redis, else memory with one API worker and a
    #: folder in the server's run folder with more.
    image_store: str = "auto"
    #: The base of those links, e.g. "https://images.example.com" behind a proxy or ingress; empty: the
    #: URL each request came to (its Host header, which a client controls).
    public_url: str = ""
    #: Where the workers of this server (and the replicas of a deployment) share their state: tasks, the
    #: engine's cancels, progress and partial images, the admin action log, A1111 callers' jobs (see
    #: t2i_core/state/). "auto": in memory with one API worker and one engine worker, else a SQLite
    #: file in the server's run folder; "memory"; "sqlite:<file>" (one machine); "redis://host:port/db"
    #: (a Redis server that several replicas share: they act as one server; "?prefix=" in the URL
    #: keeps several deployments apart on one Redis).
    state: str = "auto"
    #: Tasks (/tasks/generate): seconds a finished task (its status and result) is kept (0: 24 h), the
    #: most bytes the results may take in all (past it the oldest are removed until they take 90% of it;
    #: 0: no cap), and seconds between two removals of expired tasks by an API worker. See
    #: t2i_core/api/surfaces/tasks/store.py.
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
    #: QKV projections, torch.compile of the denoiser, compiled at startup at batch 1, 2 and
    #: ``max_batch_size`` for each of these warm-up sizes ("512x512,768x768"; empty: the default model's
    #: size), so that traffic never waits for a compile: ``/readyz`` answers 503 until it is done (with
    #: ``preload``), and a graph compiled later is logged and counted in
    #: ``t2i_compiled_graphs_total{phase="serving"}``.
    channels_last: int = 0
    fuse_qkv: int = 0
    compile: int = 0
    warmup_sizes: str = ""
    #: With ``compile``: the rank of the LoRA slot every adapter of a compiled model is swapped into in
    #: place (no recompile when requests change adapters; t2i_core/engine/lora_slot.py). The adapters of
    #: one request must add up to at most this rank (400 beyond). 0: the sum of the 4 largest ranks of
    #: the adapters registered for the model's family (any request fits). The slot is computed for every
    #: image of the model, so a smaller rank costs less.
    compile_lora_rank: int = 0

    def __post_init__(self) -> None:
        check_settings(self)

    @classmethod
    def from_env(cls) -> "Settings":
        values: dict[str, object] = {}
        for f in fields(cls):
            reader = _int if isinstance(f.default, int) else _str
            values[f.name] = reader(f"T2I_{f.name.upper()}", f.default)  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]


def check_settings(settings: Settings) -> None:
    """SettingsError naming the first setting that cannot be used (checked at startup, before any worker
    starts: a bad value stops the server in one line instead of failing every request or restarting
    the engine worker forever)."""
    def bad(field: str, expected: str) -> SettingsError:
        return SettingsError(f"T2I_{field.upper()} must be {expected}; got {getattr(settings, field)!r}")

    for f in fields(settings):
        value = getattr(settings, f.name)
        if f.name in SWITCHES and value not in (0, 1):
            raise bad(f.name, "0 or 1")
        if isinstance(value, int) and value < LEAST.get(f.name, 0):
            raise bad(f.name, f"an integer of {LEAST.get(f.name, 0)} or more")
    if not DEVICE.fullmatch(settings.device):
        raise bad("device", "auto, cpu, mps, cuda or xpu (with an optional index, e.g. cuda:1)")
    if settings.dtype != "auto" and settings.dtype not in DTYPES:
        raise bad("dtype", f"auto or one of {', '.join(DTYPES)}")
    if settings.cpu_bf16.lower() not in CPU_BF16_MODES:
        raise bad("cpu_bf16", f"one of {', '.join(CPU_BF16_MODES)}")
    if settings.cpu_backend not in CPU_BACKENDS:
        raise bad("cpu_backend", f"one of {', '.join(CPU_BACKENDS)}")
    if settings.preview_decode not in PREVIEW_DECODERS:
        raise bad("preview_decode", f"one of {', '.join(PREVIEW_DECODERS)}")
    kind, sep, where = settings.image_store.partition(":")
    if not (settings.image_store in ("auto", "memory", "state") or (kind in ("dir", "fsspec") and sep and where)):
        raise bad("image_store", "auto, memory, state, dir:<folder> or fsspec:<url>")
    if settings.public_url:
        url = urlsplit(settings.public_url)
        if url.scheme not in ("http", "https"):
            raise SettingsError(f"T2I_PUBLIC_URL must start with http:// or https://; got {settings.public_url!r}")
        if not url.netloc:
            raise SettingsError(f"T2I_PUBLIC_URL must name a host after {url.scheme}://; got {settings.public_url!r}")
    warmup_sizes(settings.warmup_sizes)
    webhook_allow(settings.webhook_allow)
    if settings.webhook_secret and not _is_webhook_secret(settings.webhook_secret):
        raise SettingsError("T2I_WEBHOOK_SECRET must be 'whsec_' followed by the base64 of 16 bytes or more "
                            "(python -m t2i_core key-new makes one); got a value that is not")
    try:
        check_spec(settings.state)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def warmup_sizes(text: str) -> tuple[tuple[int, int], ...]:
    """``T2I_WARMUP_SIZES`` ("512x512,768x512") as (width, height) pairs; SettingsError when malformed."""
    from t2i_core.common.fields import MAX_SIDE, MIN_SIDE, SIDE_MULTIPLE

    sizes = []
    for raw in (s.strip() for s in text.split(",") if s.strip()):
        try:
            width, height = (int(v) for v in raw.lower().split("x"))
        except ValueError:
            width = height = -1
        if not all(MIN_SIDE <= v <= MAX_SIDE and v % SIDE_MULTIPLE == 0 for v in (width, height)):
            raise SettingsError(
                f"T2I_WARMUP_SIZES entries must be WIDTHxHEIGHT with sides multiples of {SIDE_MULTIPLE} "
                f"between {MIN_SIDE} and {MAX_SIDE}; got {raw!r}"
            )
        sizes.append((width, height))
    return tuple(sizes)


def webhook_allow(text: str) -> tuple["ipaddress.IPv4Network | ipaddress.IPv6Network", ...]:
    """``T2I_WEBHOOK_ALLOW`` ("127.0.0.1,10.0.0.0/8") as networks; SettingsError when malformed."""
    import ipaddress

    networks = []
    for raw in (s.strip() for s in text.split(",") if s.strip()):
        try:
            networks.append(ipaddress.ip_network(raw, strict=False))
        except ValueError:
            raise SettingsError(f"T2I_WEBHOOK_ALLOW entries must be IP addresses or networks such as 127.0.0.1 or "
                                f"10.0.0.0/8; got {raw!r}") from None
    return tuple(networks)


def _is_webhook_secret(secret: str) -> bool:
    import base64
    import binascii

    if not secret.startswith("whsec_"):
        return False
    try:
        return len(base64.b64decode(secret[len("whsec_"):] + "==")) >= 16
    except (binascii.Error, ValueError):
        return False
