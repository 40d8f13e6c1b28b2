"""Output images encoded in separate processes (encoders), beside the API's event loop instead of on it.

Under load the server runs in lock step: the engine computes a batch while the API waits, then the
API answers the batch's requests one after the other while the engine waits. Encoding a PNG was a
third of the API's busy time in that turn (py-spy at 16 clients on the tiny model: 0.27 ms of
~0.85 ms per request), on the one core the event loop runs on, while the other cores had little to
do. Threads do not help: Pillow's Python code needs the GIL the busy event loop holds, and a thread
waits up to Python's switch interval (5 ms) for it (docs/performance.md). A process has its own.

Each API worker starts ``processes`` encoder processes (``python -m t2i_core.api.images.encoder_process``) on first
use, talks to them over pipes with asyncio's subprocess protocol (no thread in this process), sends
each image to the encoder with the fewest jobs and resolves each request's own future as its reply
arrives, so a batch's first answers leave while its last images are still being encoded.

An encoder that dies, or cannot start, costs no request: its images are encoded in a thread of this
process instead, and a new encoder is started at the next use (at most every ``RESTART_DELAY_S``).
An encoder that hangs (stopped, deadlocked, swapped out) is treated the same way once it has spent
longer than ``encode_deadline_s`` on the image it is working on without a byte of reply: it is
killed (SIGKILL, which also ends a stopped process), one WARNING is logged, and its images are
encoded in this process. So no request waits on a hung encoder for more than that bound (plus the
encodes queued ahead of it on that encoder, which are bounded the same way) and its own encode here.
Pools are per event loop: a pool used from another loop (tests) starts encoders of its own there.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import sys
from pathlib import Path

from t2i_core.api.images.encoder_process import FORMATS, JOB, REPLY
from t2i_core.api.images.codecs import timed_encode

log = logging.getLogger("t2i")

#: Seconds between attempts to start an encoder after one died or failed to start.
RESTART_DELAY_S = 5.0
#: Seconds any one image may take in an encoder before the encoder counts as hung, on top of
#: ``ENCODE_S_PER_MEGAPIXEL`` (see ``encode_deadline_s``): covers the pipe transfer, an encoder's start
#: (Python and Pillow's import before its first job) and a busy machine.
ENCODE_BASE_S = 5.0
#: Seconds per million pixels on top of ``ENCODE_BASE_S``. Measured in process with
#: ``codecs.timed_encode`` on a 2048x2048 image (4.2 Mpx, the largest) on a 2-core machine under a
#: load of 2: random noise 1.37 s as WebP (the slowest), 0.26 s as PNG, 0.07 s as JPEG; a smooth
#: gradient 0.93 s as WebP. The bound for 2048x2048 is 5 + 2.5 * 4.19 = 15.5 s, over 10x the slowest.
ENCODE_S_PER_MEGAPIXEL = 2.5
#: The folder that holds this t2i_core package: the encoders run ``-m t2i_core.api.images.encoder_process`` there
#: (first on their path, so that they run this very package).
PACKAGE_PARENT = str(Path(__file__).resolve().parents[3])


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity, e.g. a container's cpuset), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def default_processes(setting: int) -> int:
    """``T2I_ENCODE_PROCESSES``: -1 is one per CPU beyond the first (the event loop's), at most 8."""
    return min(8, available_cpus() - 1) if setting < 0 else setting


def encode_deadline_s(width: int, height: int) -> float:
    """Seconds an encoder may spend on one ``width`` x ``height`` image before it counts as hung."""
    return ENCODE_BASE_S + ENCODE_S_PER_MEGAPIXEL * width * height / 1e6


class EncoderGone(Exception):
    """The encoder holding the job exited, or was killed as hung, before it answered."""


class _EncoderProcess(asyncio.SubprocessProtocol):
    """One encoder process: writes jobs to its stdin, parses replies from its stdout.

    The process encodes its jobs one after the other, in the order they were sent, so the oldest
    pending job is the one it is working on. A timer watches that job: it must be answered within
    ``encode_deadline_s`` of the last sign of progress (a reply's bytes arriving, or the job being
    sent to an idle encoder), or the encoder is killed as hung and its jobs fail with ``EncoderGone``.
    """

    def __init__(self) -> None:
        self.transport: asyncio.SubprocessTransport | None = None
        self.stdin: asyncio.WriteTransport | None = None
        self.pending: dict[int, asyncio.Future[tuple[bytes, float]]] = {}
        self.alive = True
        self.stopping = False  # ended by the pool (not a crash)
        self._buffer = bytearray()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deadlines: dict[int, float] = {}  # job -> its encode_deadline_s
        self._progress = 0.0  # loop time of the last sign of progress
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.stdin = self.transport.get_pipe_transport(0)  # type: ignore[union-attr,assignment]

    def submit(
        self, job: int, pixels: bytes, width: int, height: int, code: int, parameters: str = "", quality: int = 0
    ) -> asyncio.Future[tuple[bytes, float]]:
        future: asyncio.Future[tuple[bytes, float]] = asyncio.get_running_loop().create_future()
        if not self.alive or self.stdin is None or self.stdin.is_closing():
            future.set_exception(EncoderGone("the encoder process is not running"))
            return future
        self._loop = asyncio.get_running_loop()
        if not self.pending:  # idle: the encoder starts on this job now
            self._progress = self._loop.time()
        self.pending[job] = future
        self._deadlines[job] = encode_deadline_s(width, height)
        text = parameters.encode("utf-8")
        self.stdin.write(JOB.pack(job, width, height, code, quality, len(pixels), len(text)))
        self.stdin.write(pixels)
        if text:
            self.stdin.write(text)
        if self._timer is None:
            self._watch()
        return future

    def _watch(self) -> None:
        """Arm the timer for the job the encoder is on (the oldest pending one), if any."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.alive and self.pending and self._loop is not None and not self._loop.is_closed():
            deadline = self._progress + self._deadlines[next(iter(self.pending))]
            self._timer = self._loop.call_at(deadline, self._check)

    def _check(self) -> None:
        """The timer: kill the encoder if it made no progress on its current job in time."""
        self._timer = None
        if not self.alive or not self.pending or self._loop is None:
            return
        waited = self._loop.time() - self._progress
        if waited < self._deadlines[next(iter(self.pending))]:  # bytes arrived meanwhile
            self._watch()
            return
        pid = self.transport.get_pid() if self.transport is not None else None
        log.warning("an image encoder process (pid %s) did not answer in %.1f s and is killed as hung; %d of its "
                    "images are encoded in the API process, and a new encoder starts at the next use",
                    pid, waited, len(self.pending))
        self.stop(signal.SIGKILL)

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if self._loop is not None:
            self._progress = self._loop.time()  # the encoder is running (a large reply comes in pieces)
        buffer = self._buffer
        buffer += data
        while len(buffer) >= REPLY.size:
            job, ok, seconds, size = REPLY.unpack_from(buffer)
            end = REPLY.size + size
            if len(buffer) < end:
                return
            payload = bytes(buffer[REPLY.size:end])
            del buffer[:end]
            future = self.pending.pop(job, None)
            self._deadlines.pop(job, None)
            self._watch()  # the next job, from now
            if future is None or future.done():  # the request was canceled meanwhile
                continue
            if ok:
                future.set_result((payload, seconds))
            else:  # encoded again in this process, which raises the real error
                future.set_exception(EncoderGone(payload.decode(errors="replace")))

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1:
            self.lost()

    def process_exited(self) -> None:
        self.lost()

    def lost(self) -> None:
        if not self.alive:
            return
        self.alive = False
        if not self.stopping:
            code = self.transport.get_returncode() if self.transport is not None else None
            log.warning("an image encoder process exited (code %s); %d of its images are encoded in the API "
                        "process, and a new encoder starts at the next use", code, len(self.pending))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self.pending, self._deadlines = self.pending, {}, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(EncoderGone("the encoder process exited"))

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """End the process (also from another event loop, or after its loop closed)."""
        self.stopping = True
        self.lost()
        if self.transport is None:
            return
        pid = self.transport.get_pid()
        try:
            if pid is not None and self.transport.get_returncode() is None:
                os.kill(pid, sig)
                if sig != signal.SIGKILL:
                    os.kill(pid, signal.SIGCONT)  # a stopped process acts on SIGTERM only once continued
        except ProcessLookupError:
            pass
        try:
            self.transport.close()  # marks it closed, so that it does not try again when collected
        except RuntimeError:  # its event loop is closed: the pipes close with the process
            pass


class EncoderPool:
    """``await encode(pixels, width, height, fmt)`` -> (encoded bytes, seconds the encoding took)."""

    def __init__(self, processes: int):
        self.processes = max(0, processes)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._processes: list[_EncoderProcess] = []
        self._starting: asyncio.Task[None] | None = None
        self._next_start = 0.0
        self._jobs = itertools.count()
        #: images encoded in this process because no encoder could (for tests and the log)
        self.fallbacks = 0

    async def encode(
        self, pixels: bytes, width: int, height: int, fmt: str, parameters: str = "", quality: int = 0
    ) -> tuple[bytes, float]:
        encoder = await self._process() if fmt in FORMATS else None
        if encoder is not None:
            try:
                return await encoder.submit(next(self._jobs), pixels, width, height, FORMATS.index(fmt), parameters, quality)
            except EncoderGone:
                pass
        self.fallbacks += 1
        return await asyncio.to_thread(timed_encode, pixels, width, height, fmt, parameters, quality)

    async def _process(self) -> _EncoderProcess | None:
        """The live encoder with the fewest jobs (starting missing ones), or None."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first use, or another loop: the old loop's encoders cannot serve it
            self.close()
            self._loop, self._next_start = loop, 0.0
        self._processes = [w for w in self._processes if w.alive]
        if len(self._processes) < self.processes and (self._starting is not None or loop.time() >= self._next_start):
            if self._starting is None:
                self._starting = asyncio.ensure_future(self._start(self.processes - len(self._processes)))
            starting = self._starting
            await asyncio.shield(starting)
            if self._starting is starting:
                self._starting = None
            self._processes = [w for w in self._processes if w.alive]  # one may have died while starting
        return min(self._processes, key=lambda w: len(w.pending)) if self._processes else None

    async def _start(self, count: int) -> None:
        loop = asyncio.get_running_loop()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [PACKAGE_PARENT, os.environ.get("PYTHONPATH")]))}
        for _ in range(count):
            try:
                _, encoder = await loop.subprocess_exec(
                    _EncoderProcess, sys.executable, "-m", "t2i_core.api.images.encoder_process", stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE, stderr=None, env=env, cwd=PACKAGE_PARENT,
                )
            except OSError as exc:
                log.warning("could not start an image encoder process (%s); encoding in the API process", exc)
                self._next_start = loop.time() + RESTART_DELAY_S
                return
            self._processes.append(encoder)
        self._next_start = loop.time() + RESTART_DELAY_S  # an encoder that dies is replaced after this

    def close(self) -> None:
        """End the encoders (a later ``encode`` starts new ones)."""
        for encoder in self._processes:
            encoder.stop()
        self._processes = []
        self._starting = None
