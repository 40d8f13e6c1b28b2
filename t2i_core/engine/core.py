"""The engine: loads pipelines and runs a list of requests on one device.

``Engine.run`` takes the list that BentoML's adaptive batching hands over, groups it into sub-batches
of compatible settings, gives every image its own ``torch.Generator`` seeded from its own seed (so an
image depends on its request only, not on its batch-mates), and returns one result per request in
the same order. An error is reported on the results it concerns; it is never raised, so one failing
sub-batch cannot fail the rest of the batch.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from t2i_core.common import metrics
from t2i_core.common.config import Settings
from t2i_core.common.topology import cpu_memory_budget
from t2i_core.engine.devices import pick_device
from t2i_core.common.errors import (
    ClientClosed, ContentFiltered, DefaultModelChanged, EngineFailure, InvalidRequest, ModelUnavailable, OutOfMemory,
    RequestTimeout, T2IError,
)
from t2i_core.engine.admission import Admission, BatchTooLarge
from t2i_core.engine.call_arguments import call_arguments, control_arguments, prompt_arguments  # noqa: F401
from t2i_core.engine.row_guidance import per_row_guidance
from t2i_core.engine.model_manager import LoadedModel, ModelManager
from t2i_core.common.registry import Registry
from t2i_core.common.schemas import EngineRequest, EngineResult, Preview
from t2i_core.engine.compile_watch import CompileWatch
from t2i_core.engine.speedups import Speedups
from t2i_core.engine.step_cache import CacheCount, denoising_steps, step_cache
from t2i_core.engine.stage_timer import StageTimer, device_sync
from t2i_core.engine.request_board import RequestBoard
from t2i_core.engine.previews import preview_rows, preview_steps
from t2i_core.engine.worker_sync import SharedWorkers
from t2i_core.engine.worker_board import ACTIONS, WorkerBoard
from t2i_core.state.memory import MemoryState
from t2i_core.state.store import StateStore
from t2i_core.engine.stop_points import Cancelled, StopPoints

log = logging.getLogger("t2i.engine")


def default_budget(device: str) -> int:
    """85% of the GPU's memory; on CPU or MPS, 90% of the RAM or of the container's memory limit."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.get_device_properties(torch.device(device)).total_memory * 0.85)
    return cpu_memory_budget()


T = TypeVar("T")


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()  # MPS, older CUDA paths


class Engine(SharedWorkers):
    def __init__(self, settings: Settings | None = None, registry: Registry | None = None,
                 state: StateStore | None = None, server: str = "server", worker: int = 1):
        """``state``: what this engine worker shares with the others (``T2I_STATE``; this process's memory
        when None: the only worker); ``server`` names its server (its host and run folder) and ``worker``
        is its number there (see request_board.py and worker_board.py)."""
        self.settings = settings or Settings.from_env()
        self.registry = registry or Registry(default=self.settings.model)
        self.device = pick_device(self.settings.device)
        # Every torch call runs on this one thread. OpenMP keeps a thread pool per calling thread: loading
        # on one thread and computing on another (BentoML calls sync APIs from worker threads) made
        # the CPU engine run at half speed, effectively single-threaded (measured: 63.7 vs 91.9 img/s at
        # batch 8 on 2 cores). One thread is also the simple discipline for CUDA.
        self._torch_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="t2i-torch")
        self._torch_thread = self._torch_pool.submit(self._init_torch_thread).result()
        self.models = ModelManager(
            self.registry, self.device, self.settings.dtype,
            self.settings.memory_budget_bytes or default_budget(self.device),
            load_timeout_s=self.settings.request_timeout_s,
            speedups=Speedups.from_settings(self.settings), cpu_bf16=self.settings.cpu_bf16,
            cpu_backend=self.settings.cpu_backend,
        )
        self._batch_sizes: deque[int] = deque(maxlen=10_000)
        #: batch sizes per kind of work (``EngineRequest.label``): generate, inpaint, +adapters, +controlnet
        self._batch_sizes_by_kind: dict[str, deque[int]] = {}
        self._counts: Counter[str] = Counter()
        self._busy_s = 0.0  # seconds spent in pipeline calls that produced images
        self._active = 0  # run() calls in progress
        self._idle_since: float | None = time.monotonic()
        self._cancel_lock = threading.Lock()
        self._closed = threading.Event()
        self.stage_timer = StageTimer(device_sync(self.device))
        self.stop_points = StopPoints()
        self._collected_this_call = False
        #: the step cache's count of the last pipeline call (a speed tier's; empty without one)
        self._cache_count = CacheCount()
        #: with T2I_COMPILE: graphs compiled at start-up and while serving (a recompile under traffic)
        self.compile_watch = CompileWatch() if self.models.speedups.compile else None
        self._warming_up = False
        self.worker = worker
        self.board: WorkerBoard | None = None
        state = state if state is not None else MemoryState()
        #: activation memory: every batch is admitted (split, tiled, refused) before it runs; with other
        #: engine workers beside it, memory short now may be theirs (a 503 to retry, not a 422)
        self.admission = Admission(self.models, self.device, shared=state.shared)
        #: cancellations, progress, partial images (shared by the engine workers, in the shared state)
        keep_s = float(self.settings.request_timeout_s)  # a request can run no longer: its wishes go then
        self.requests = RequestBoard(state, keep_s)
        if state.shared:
            self.board = WorkerBoard(state, server, worker, self.device)
            self._applied = 0
            self._catching_up = threading.Event()
            self.on_torch_thread(self._join_workers)
            self._beating = threading.Thread(target=self._beat, name="t2i-board", daemon=True)
            self._beating.start()

    def close(self) -> None:
        """At shutdown (after the drain): stop the heartbeat and leave the other workers at once, so
        that an admin action does not wait for this worker; then let the torch thread end."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self.board is not None:
            self._beating.join(timeout=5)
            try:
                self.board.leave()
            except T2IError:  # the shared state is away: the heartbeat's expiry takes this worker out
                pass
        self.requests.close()
        self._torch_pool.shutdown(wait=False, cancel_futures=True)

    def _init_torch_thread(self) -> threading.Thread:
        if self.settings.torch_threads > 0:
            import torch

            torch.set_num_threads(self.settings.torch_threads)
        return threading.current_thread()

    def on_torch_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the engine's torch thread (directly when already there)."""
        if threading.current_thread() is self._torch_thread:
            return fn(*args)
        return self._torch_pool.submit(fn, *args).result()

    def load(self, model_id: str) -> LoadedModel:
        """Load ``model_id`` now (normally models load on first use)."""
        return self.on_torch_thread(self.models.load, model_id)

    def preload(self) -> None:
        """Load the default model and every registry entry marked ``preload``; with ``T2I_COMPILE``,
        compile them for the warm-up sizes."""
        for model_id in dict.fromkeys([self.registry.default_id, *(e.id for e in self.registry.entries() if e.preload)]):
            try:
                self.load(model_id)
            except T2IError as err:
                log.warning("preload of %s failed: %s", model_id, err.message)
                continue
            if self.models.speedups.compile:
                self.warm_up(model_id)

    def warm_up(self, model_id: str) -> None:
        """Run ``model_id`` at batch 1, 2 and the maximum for each warm-up size, so that torch.compile
        compiles now (the second batch size makes the batch dimension dynamic) and not under traffic.
        The graphs compiled here count as start-up's (``compile_watch``); the server is not ready before."""
        entry = self.registry.get(model_id)
        sizes = self.models.speedups.warmup_sizes or ((entry.defaults.width, entry.defaults.height),)
        for width, height in sizes:
            for batch in sorted({1, 2, self.settings.max_batch_size}):
                # prompts of another length per batch size: a text encoder that does not pad to a fixed
                # length (Qwen-Image's) makes that dimension dynamic at start-up too
                warm = [EngineRequest(model=model_id, prompt="warm-up" + " more" * (batch + i), seed=i,
                                      steps=entry.defaults.steps, guidance_scale=entry.defaults.guidance_scale,
                                      width=width, height=height) for i in range(batch)]
                self._warm(warm, f"{width}x{height} batch {batch}")
            if entry.edit_traits.kind == "reference":
                # a reference edit adds its image's tokens to every block's sequence: another shape, compiled
                # now too (batch 1 and 2: that dimension dynamic as for text to image)
                for batch in sorted({1, 2, self.settings.max_batch_size}):
                    self._warm(self._reference_edits(entry, width, height, batch),
                               f"{width}x{height} reference edit batch {batch}")

    def _reference_edits(self, entry: Any, width: int, height: int, batch: int) -> list[EngineRequest]:
        """``batch`` reference edits of a gray ``width`` x ``height`` image, resolved as the API would."""
        from t2i_core.common.schemas import EditRequest, InputImage, to_engine

        reference = InputImage(width=width, height=height, pixels=bytes([128]) * (width * height * 3))
        return [to_engine(EditRequest(prompt="warm-up" + " more" * (batch + i), model=entry.id), entry, seed=i,
                          mode="edit", registry=self.registry, image_size=(width, height))
                .model_copy(update={"references": [reference]}) for i in range(batch)]

    def _warm(self, items: list[EngineRequest], what: str) -> None:
        started = time.perf_counter()
        self._warming_up = True
        try:
            results = self.run(items)
        finally:
            self._warming_up = False
        failed = next((r.error for r in results if r.error), None)
        log.info("warm-up %s %s: %.1fs%s", items[0].model, what, time.perf_counter() - started,
                 f" (failed: {failed['message']})" if failed else "")

    def model_action(self, action: str, model_id: str) -> dict[str, Any]:
        """Admin operations; errors come back as data (``{"error": {...}}``), never raised. With several
        engine workers, every worker applies it (see t2i_core/engine/workers.py): the answer is this
        worker's, with ``workers``: each live worker's ``ok`` or error message."""
        if self.board is None or action not in ACTIONS:
            return self.on_torch_thread(self._model_action, action, model_id)
        if action == "set_default":
            try:  # refused before it is logged: a worker that starts later must not replay it
                self._check_default(model_id)
            except T2IError as err:
                return {"error": err.to_dict()}
        return self._action_on_every_worker(action, model_id)

    def _check_default(self, model_id: str) -> None:
        reason = self.registry.get(model_id).unavailable_reason()
        if reason is not None and model_id not in self.models.loaded_ids():
            # every request without a model would fail until the default changed again
            raise ModelUnavailable(f"cannot make {model_id!r} the default: {reason}", param="model")

    def _model_action(self, action: str, model_id: str) -> dict[str, Any]:
        try:
            if action == "load":
                loaded = self.models.load(model_id)
                return {"ok": True, "model": model_id, "state": "loaded", "bytes": loaded.bytes, "load_s": loaded.load_s}
            if action == "unload":
                return {"ok": True, "model": model_id, "unloaded": self.models.unload(model_id)}
            if action == "set_default":
                self._check_default(model_id)
                self.registry.set_default(model_id)
                return {"ok": True, "model": model_id, "default": True}
            raise InvalidRequest(f"action must be load, unload or set_default; got {action!r}", param="action")
        except T2IError as err:
            return {"error": err.to_dict()}

    # ---- running ------------------------------------------------------------------------------
    def run(self, requests: list[EngineRequest]) -> list[EngineResult]:
        """One result per request, in order; errors are reported per result, never raised."""
        with self._cancel_lock:
            self._active += 1
            self._idle_since = None
        try:
            return self.on_torch_thread(self._run, requests)
        finally:
            with self._cancel_lock:
                self._active -= 1
                if self._active == 0:
                    self._idle_since = time.monotonic()

    def idle_since(self) -> float | None:
        """When the engine last became idle (monotonic seconds); None while it is working."""
        return self._idle_since

    def _run(self, requests: list[EngineRequest]) -> list[EngineResult]:
        self._collected_this_call = False
        if self.board is not None:
            self._board_chore(self._catch_up)
        self.requests.refresh([r.request_id for r in requests])
        results: list[EngineResult | None] = [None] * len(requests)
        groups: dict[tuple[Any, ...], list[int]] = {}
        default = self.registry.default_id
        for index, req in enumerate(requests):
            if req.model_defaulted and req.model != default:  # the API's copy of the default is stale
                results[index] = EngineResult(model=default, error=DefaultModelChanged(
                    f"the default model is now {default!r}, not {req.model!r}", param="model").to_dict())
                continue
            groups.setdefault(req.batch_key(), []).append(index)
        self._counts["engine_calls"] += 1
        for indices in groups.values():
            items = [requests[i] for i in indices]
            for i, result in zip(indices, self._run_group(items)):
                results[i] = result
        if self.board is not None:
            self._board_chore(self._publish, True)
        return [r for r in results if r is not None]

    def _board_chore(self, fn: Callable[..., Any], *args: Any) -> None:
        """Worker-board work around a batch (apply new admin actions, publish states): the batch runs
        whether or not the shared state can be reached (the heartbeat retries)."""
        try:
            fn(*args)
        except T2IError as err:
            log.warning("engine worker %d: %s skipped: %s", self.worker, fn.__name__, err.message)

    def _run_group(self, items: list[EngineRequest]) -> list[EngineResult]:
        seeds = [r.seed for r in items]  # decided by the API
        now = time.time()
        waits = [now - r.submitted_at if r.submitted_at is not None else 0.0 for r in items]
        for req, wait in zip(items, waits):
            if req.submitted_at is not None:  # sent by the API (not a warm-up or an in-process call)
                metrics.record_queue_wait(wait)
        results = self._run_split(items, seeds)
        if self.compile_watch is not None:
            self.compile_watch.note("startup" if self._warming_up else "serving",
                                    f"{items[0].model} {items[0].label()} {items[0].width}x{items[0].height} "
                                    f"batch {len(items)}")
        stopped = {ClientClosed.code, RequestTimeout.code}
        cancelled = [bool(r.error and r.error.get("code") in stopped) for r in results]
        self.requests.set_progress([req.request_id for req, c in zip(items, cancelled) if not c], state="done")
        self.requests.set_progress([req.request_id for req, c in zip(items, cancelled) if c], state="cancelled")
        return [r.model_copy(update={"queue_s": round(max(0.0, w), 6)}) for r, w in zip(results, waits)]

    def _run_split(self, items: list[EngineRequest], seeds: list[int]) -> list[EngineResult]:
        """Run ``items``; when the batch fails (out of memory, or one bad item), run each half
        alone, down to single items, so that only the items that really fail get an error."""
        results: dict[int, EngineResult] = {}
        live = []
        for i, req in enumerate(items):
            reason = self._cancel_reason(req)
            if reason is not None:
                results[i] = self._failed(req, seeds[i], reason)
            else:
                live.append(i)
        if live:
            todo = [items[i] for i in live]
            for i, result in zip(live, self._attempt(todo, [seeds[i] for i in live])):
                results[i] = result
        return [results[i] for i in range(len(items))]

    def _attempt(self, items: list[EngineRequest], seeds: list[int]) -> list[EngineResult]:
        # Every retry runs after the ``except`` block has been left: a live exception keeps its
        # traceback, whose frames hold the failed call's tensors (activations on the GPU), alive.
        cancelled, failure, fits = False, None, 0  # failure: (out of memory, "Type: message")
        try:
            started = time.perf_counter()
            pixels, stages, flagged = self._call_pipeline(items, seeds)
            elapsed = time.perf_counter() - started
        except Cancelled:
            cancelled = True
        except BatchTooLarge as too_large:  # its activations do not fit: in sub-batches, one after another
            fits = too_large.fits
        except T2IError as err:  # the same for every item (e.g. the model is unavailable)
            return [self._failed(r, s, err) for r, s in zip(items, seeds)]
        except Exception as exc:  # noqa: BLE001 - split, or reported to the one item
            oom = is_out_of_memory(exc)
            if not oom and len(items) == 1:
                log.exception("generation failed for one image (%s)", items[0].model)
            failure = (oom, f"{type(exc).__name__}: {exc}")
        if cancelled:
            return self._run_split(items, seeds)  # every item is cancelled now: each gets its reason
        if fits:
            return [result for start in range(0, len(items), fits)
                    for result in self._run_split(items[start:start + fits], seeds[start:start + fits])]
        if failure is not None:
            return self._recover(items, seeds, *failure)
        self._batch_sizes.append(len(items))
        label = items[0].label()
        if label in self._batch_sizes_by_kind or len(self._batch_sizes_by_kind) < 256:
            self._batch_sizes_by_kind.setdefault(label, deque(maxlen=1000)).append(len(items))
        self._counts["images"] += len(items)
        self._busy_s += elapsed
        metrics.record_batch(items[0].model, items[0].mode, len(items), stages, items[0].control_label())
        cache = self._cache_count
        metrics.record_speed(items[0].model, items[0].speed, len(items), cache.calls, cache.skipped,
                             sum(r.steps_skipped for r in items))
        results: list[EngineResult] = []
        batch_id = uuid.uuid4().hex[:16]
        for r, s, p, bad in zip(items, seeds, pixels, flagged):
            # an image whose request was cancelled while its batch-mates kept the batch going is dropped:
            # its client (an A1111 interrupt, a task cancel) gets the error, not the image
            reason: T2IError | None = self._cancel_reason(r)
            if reason is None and bad:
                reason = ContentFiltered(
                    f"the safety checker of model {r.model!r} flagged the image of seed {s} as possibly not safe "
                    "for work; it is not returned (try another prompt or seed)",
                    param="prompt",
                )
            results.append(self._failed(r, s, reason) if reason is not None else EngineResult(
                model=r.model, seed=s, width=r.width, height=r.height, pixels=p,
                batch_size=len(items), inference_s=elapsed, stages=stages,
                cache_calls=cache.calls, cache_skipped=cache.skipped, batch_id=batch_id,
            ))
        return results

    def _recover(self, items: list[EngineRequest], seeds: list[int], oom: bool, what: str) -> list[EngineResult]:
        """After a failed batch: free the cache, run each half alone, down to the one item that fails."""
        if oom:
            self._counts["oom_retries"] += 1
            metrics.record_oom_retry()
            # one garbage collection per engine call: each took 0.4 s, and 12 images split down to pairs
            # meet 7 out-of-memory errors (3.6 s instead of 1.2 s); the cache is emptied every time
            self.models.free_cache(collect=not self._collected_this_call)
            self._collected_this_call = True
        if len(items) > 1:
            log.warning("batch of %d failed (%s); retrying in halves", len(items), what.partition(":")[0])
            half = len(items) // 2
            return self._run_split(items[:half], seeds[:half]) + self._run_split(items[half:], seeds[half:])
        if oom:
            err: T2IError = OutOfMemory(
                f"out of memory generating one {items[0].width}x{items[0].height} image on {self.device}; "
                "try a smaller size or fewer steps"
            )
        else:
            err = EngineFailure(f"generation failed: {what}")
        return [self._failed(items[0], seeds[0], err)]

    def _failed(self, req: EngineRequest, seed: int, err: T2IError) -> EngineResult:
        self._counts["errors"] += 1
        self._counts[f"errors_{err.code}"] += 1
        metrics.record_error(err.code)
        return EngineResult(model=req.model, seed=seed, width=req.width, height=req.height, error=err.to_dict())

    # ---- cancellation -------------------------------------------------------------------------
    def cancel(self, request_ids: list[str]) -> int:
        """Stop working for these requests (their client left or timed out); returns how many."""
        self.requests.cancel(request_ids)
        return len(request_ids)

    def _cancel_reason(self, req: EngineRequest) -> T2IError | None:
        if req.deadline is not None and time.time() > req.deadline:  # a timed-out request is cancelled too
            limit = self.settings.request_timeout_s
            return RequestTimeout(f"the request took longer than the {limit}s limit (T2I_REQUEST_TIMEOUT_S); its work was stopped")
        if req.request_id and self.requests.is_cancelled(req.request_id):
            return ClientClosed("the request was cancelled (its client left, interrupted it or cancelled its task); "
                                "its work was stopped")
        return None

    def _call_pipeline(self, items: list[EngineRequest], seeds: list[int]) -> tuple[list[bytes], dict[str, float], list[bool]]:
        first = items[0]
        if 0 <= self.settings.fault_oom_above < len(items):
            import torch

            raise torch.OutOfMemoryError(f"injected: batch of {len(items)} > T2I_FAULT_OOM_ABOVE={self.settings.fault_oom_above}")
        model_id = first.model
        self._check_tier_compiles(first)
        if first.mode == "inpaint":  # the registry may name a dedicated inpainting checkpoint
            model_id = self.registry.get(first.model).inpainting or model_id
        with self.models.use(model_id) as loaded, self.models.use_controlnet(first.controlnet, loaded) as controlnet:
            self.models.activate_adapters(loaded, first.adapters)
            pipe = loaded.pipeline(first.mode, first.scheduler, first.controlnet, controlnet)
            with self.admission.admit(loaded, pipe, items):
                return self._denoise(pipe, items, seeds, loaded.entry.pipeline)

    def _check_tier_compiles(self, first: EngineRequest) -> None:
        """With ``T2I_COMPILE`` a ``pab`` tier is refused before anything loads: its cache hooks the
        attention layers inside the compiled blocks, so turning it on or off would recompile them."""
        tier = self.registry.get(first.model).speed.get(first.speed)
        if tier is not None and tier.cache == "pab" and self.models.speedups.compile:
            raise InvalidRequest(
                f"speed {first.speed!r} of model {first.model!r} uses the pab cache, which hooks the attention "
                "layers inside the compiled blocks and cannot run with T2I_COMPILE=1 without recompiling them; "
                "use another speed, or give this tier a taylorseer, first_block or mag cache", param="speed")

    def _denoise(
        self, pipe: Any, items: list[EngineRequest], seeds: list[int], family: str = "sd"
    ) -> tuple[list[bytes], dict[str, float], list[bool]]:
        """Pixels per image, the stage split, and per image whether the model's safety checker flagged it."""
        import numpy as np
        import torch

        # CPU generators: the same seed gives the same starting noise on every device.
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        first = items[0]
        kwargs = call_arguments(pipe, family, items, generators)
        kwargs["callback_on_step_end"] = self._stop_when_all_cancelled(items)
        self.requests.set_progress([req.request_id for req in items], state="running", step=0, steps=None)
        self.stage_timer.attach(pipe)
        self.stop_points.attach(pipe, denoiser_compiled=self.models.speedups.compile)
        self.stage_timer.start()
        tier = self.registry.get(first.model).speed.get(first.speed)  # (None for quality)
        # (what call_arguments passes: a strength edit noises its image part way and runs the rest of the steps)
        strength = first.strength if first.mode != "generate" and not first.references else None
        try:
            with torch.inference_mode(), self.stop_points.watching(lambda: self._all_unwanted(items)), \
                    step_cache(pipe, tier, denoising_steps(first.steps, strength)) as self._cache_count, \
                    per_row_guidance(pipe, items):
                output = pipe(**kwargs)
        finally:
            stages = self.stage_timer.stop()
        array = (np.asarray(output.images) * 255.0).round().clip(0, 255).astype(np.uint8)
        if array.shape[1:3] != (first.height, first.width):  # a pipeline that chose its own size
            raise EngineFailure(f"the pipeline of model {first.model!r} made {array.shape[2]}x{array.shape[1]} images "
                                f"for {first.width}x{first.height}")
        # diffusers' safety checker blacks out a flagged image and says so here (None: no checker)
        flagged = [bool(f) for f in (getattr(output, "nsfw_content_detected", None) or [False] * len(items))]
        return [np.ascontiguousarray(a).tobytes() for a in array], stages, flagged

    def _all_unwanted(self, items: list[EngineRequest]) -> bool:
        return all(self._cancel_reason(r) is not None for r in items)

    def _stop_when_all_cancelled(self, items: list[EngineRequest]) -> Any:
        """A diffusers step callback that aborts the batch once no item of it is wanted any more."""

        def on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            steps = getattr(pipe, "num_timesteps", None)
            self.requests.set_progress([req.request_id for req in items], step=step + 1, steps=steps)
            if self._all_unwanted(items):
                raise Cancelled()
            self._store_previews(pipe, items, step + 1, steps, tensors)
            return tensors

        return on_step_end

    def _store_previews(self, pipe: Any, items: list[EngineRequest], step: int, steps: int | None,
                        tensors: dict[str, Any]) -> None:
        """Decode the rows of the requests that asked for a partial image at this step."""
        if steps is None or "latents" not in tensors:
            return
        live = {r.request_id for r in items if r.request_id and self._cancel_reason(r) is None}
        wanted = self.requests.take_wanted(list(live))
        rows = [i for i, r in enumerate(items) if r.request_id in live and (
            r.request_id in wanted or (r.partial_images and step in preview_steps(r.partial_images, steps)))]
        if not rows:
            return
        first = items[0]
        try:
            decoded = preview_rows(pipe, tensors["latents"], rows, first.width, first.height,
                                   approximate=self.settings.preview_decode != "vae")
        except Exception:  # noqa: BLE001 - a preview never fails its batch
            log.warning("partial image of %s not made", first.model, exc_info=True)
            return
        for i, (pixels, width, height) in zip(rows, decoded or []):
            rid = items[i].request_id
            self.requests.add_preview(rid, Preview(step=step, steps=steps, pixels=pixels, width=width, height=height),
                                    caller=wanted.get(rid, ""))

    def take_previews(self, request_id: str, since: int = 0) -> list[Preview]:
        """The partial images of ``request_id`` made so far, from index ``since`` on."""
        return self.requests.previews(request_id, since)

    def want_preview(self, request_id: str, caller: str = "") -> None:
        """Decode ``request_id``'s latents after its next step (a live preview asked for while it runs),
        for ``caller`` (an API key's hash or a client address): kept while the request can still run,
        one per request, a bounded number per caller (see t2i_core/engine/request_board.py)."""
        self.requests.want_preview(request_id, caller)

    # ---- progress -----------------------------------------------------------------------------
    def progress(self, request_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Where these requests are: ``{"state": "queued"|"running"|"done"|"cancelled", "step": k, "steps": n}``
        (``steps`` is the number of denoising steps, known once the pipeline has started), whichever
        engine worker runs them."""
        return self.requests.progress(request_ids)

    # ---- observability ------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """What the engine has done; with several workers, summed over them (each under ``workers``)."""
        if self.board is None:
            return self._own_stats()
        return self._merged_stats()

    def _own_stats(self) -> dict[str, Any]:
        sizes = list(self._batch_sizes)
        return {
            "worker": self.worker,
            "device": self.device,
            "default_model": self.registry.default_id,
            "loaded_models": self.models.loaded_ids(),
            "evicted_models": list(self.models.evicted),
            "memory_used_bytes": self.models.used_bytes(),
            "memory_budget_bytes": self.models.budget_bytes,
            "memory_splits": self.admission.splits,
            "images": self._counts["images"],
            "errors": self._counts["errors"],
            "engine_calls": self._counts["engine_calls"],
            "oom_retries": self._counts["oom_retries"],
            "busy_s": round(self._busy_s, 4),
            "errors_by_code": {k[7:]: v for k, v in self._counts.items() if k.startswith("errors_")},
            "batches": len(sizes),
            "max_batch_size_seen": max(sizes, default=0),
            "batch_size_histogram": {str(k): v for k, v in sorted(Counter(sizes).items())},
            "recent_batch_sizes": sizes[-64:],
            "batch_sizes_by_kind": {
                label: {"batches": len(b), "images": sum(b), "max": max(b), "mean": round(sum(b) / len(b), 2)}
                for label, b in sorted(self._batch_sizes_by_kind.items())
            },
            "loaded_controlnets": self.models.controlnet_ids(),
            # T2I_COMPILE: graphs compiled at start-up, and while serving (recompiles under traffic)
            "compiled_graphs_startup": self.compile_watch.graphs["startup"] if self.compile_watch else 0,
            "compiled_graphs_serving": self.compile_watch.graphs["serving"] if self.compile_watch else 0,
            **self.requests.kept(),
            **self.models.adapter_switches(),
        }
