"""Encoder processes: the same bytes as encoding in process, each request its own image, and no
request lost when a worker dies or hangs."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import pytest

from t2i_core.api.images import encode_pool
from t2i_core.api.images.encode_pool import EncoderPool, default_processes
from t2i_core.common.errors import InvalidRequest
from t2i_core.api.images.codecs import encode_image


def noise(width: int, height: int, seed: int) -> bytes:
    return bytes((i * 131 + seed * 17 + (i // 7) * seed) % 256 for i in range(width * height * 3))


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
@pytest.mark.parametrize("size", [(64, 64), (200, 120)])
def test_pool_encodes_the_same_bytes_as_the_api_process(fmt, size):
    pixels = noise(*size, seed=3)

    async def main():
        pool = EncoderPool(1)
        try:
            data, seconds = await pool.encode(pixels, *size, fmt)
        finally:
            pool.close()
        return data, seconds, pool.fallbacks

    data, seconds, fallbacks = asyncio.run(main())
    assert data == encode_image(pixels, *size, fmt)
    assert seconds > 0 and fallbacks == 0


def test_concurrent_images_each_come_back_to_their_own_request():
    images = [noise(64, 48, seed=i) for i in range(40)]

    async def main():
        pool = EncoderPool(2)
        try:
            results = await asyncio.gather(*(pool.encode(px, 64, 48, "png") for px in images))
            return [data for data, _ in results], len(pool._processes), pool.fallbacks
        finally:
            pool.close()

    encoded, workers, fallbacks = asyncio.run(main())
    assert encoded == [encode_image(px, 64, 48, "png") for px in images]
    assert workers == 2 and fallbacks == 0


def test_a_dead_worker_loses_no_image_and_is_replaced(monkeypatch):
    monkeypatch.setattr(encode_pool, "RESTART_DELAY_S", 0.0)
    images = [noise(64, 64, seed=i) for i in range(24)]

    async def main():
        pool = EncoderPool(1)
        try:
            await pool.encode(images[0], 64, 64, "png")
            (first,) = pool._processes
            pending = [asyncio.ensure_future(pool.encode(px, 64, 64, "png")) for px in images]
            await asyncio.sleep(0)  # the jobs are written to the worker
            os.kill(first.transport.get_pid(), signal.SIGKILL)
            during = [data for data, _ in await asyncio.gather(*pending)]
            while first.alive:  # the pool notices the exit
                await asyncio.sleep(0.01)
            after, _ = await pool.encode(images[1], 64, 64, "png")
            replaced = [w is not first and w.alive for w in pool._processes]
            return during, after, replaced, pool.fallbacks
        finally:
            pool.close()

    during, after, replaced, fallbacks = asyncio.run(main())
    assert during == [encode_image(px, 64, 64, "png") for px in images]
    assert after == encode_image(images[1], 64, 64, "png")
    assert replaced == [True]  # one new, live worker
    assert fallbacks >= 1  # the images the dead worker held were encoded in this process


def test_a_hung_worker_is_killed_and_replaced_and_its_image_encoded_in_time(monkeypatch, caplog):
    monkeypatch.setattr(encode_pool, "RESTART_DELAY_S", 0.0)
    pixels, later = noise(64, 64, seed=7), noise(64, 64, seed=8)
    bound = 0.5
    base, per_megapixel = encode_pool.ENCODE_BASE_S, encode_pool.ENCODE_S_PER_MEGAPIXEL

    async def main():
        pool = EncoderPool(1)
        first = None
        try:
            await pool.encode(pixels, 64, 64, "png")  # a started, warm worker
            (first,) = pool._processes
            pid = first.transport.get_pid()
            monkeypatch.setattr(encode_pool, "ENCODE_BASE_S", bound)
            monkeypatch.setattr(encode_pool, "ENCODE_S_PER_MEGAPIXEL", 0.0)
            os.kill(pid, signal.SIGSTOP)
            started = asyncio.get_running_loop().time()
            # bounded, so that a pool that never notices fails here instead of hanging the test
            data, _ = await asyncio.wait_for(pool.encode(pixels, 64, 64, "png"), timeout=10)
            waited = asyncio.get_running_loop().time() - started
            fallbacks = pool.fallbacks
            for _ in range(500):  # the kill is reaped
                if first.transport.get_returncode() is not None:
                    break
                await asyncio.sleep(0.01)
            code = first.transport.get_returncode()
            # the replacement's first job includes its start (Python, Pillow): back to the default bound
            monkeypatch.setattr(encode_pool, "ENCODE_BASE_S", base)
            monkeypatch.setattr(encode_pool, "ENCODE_S_PER_MEGAPIXEL", per_megapixel)
            after, _ = await asyncio.wait_for(pool.encode(later, 64, 64, "png"), timeout=30)
            replaced = [w is not first and w.alive for w in pool._processes]
            return data, waited, fallbacks, code, after, replaced, pool.fallbacks
        finally:
            if first is not None and first.transport.get_returncode() is None:
                for sig in (signal.SIGCONT, signal.SIGKILL):
                    try:
                        os.kill(first.transport.get_pid(), sig)
                    except ProcessLookupError:
                        pass
            pool.close()

    with caplog.at_level(logging.WARNING, logger="t2i"):
        data, waited, fallbacks, code, after, replaced, fallbacks_after = asyncio.run(main())
    assert data == encode_image(pixels, 64, 64, "png")
    assert bound <= waited < bound + 3.0  # the bound, then a 64x64 encode in this process
    assert fallbacks == 1
    assert code == -signal.SIGKILL  # killed although stopped
    hung = [r for r in caplog.records if r.levelno == logging.WARNING and "hung" in r.getMessage()]
    assert len(hung) == 1
    assert after == encode_image(later, 64, 64, "png")
    assert replaced == [True] and fallbacks_after == fallbacks  # a new worker process answered


def test_the_bound_covers_the_largest_image_with_room():
    # 2048x2048 measured at most 1.37 s (WebP of noise) in process on a busy 2-core machine
    assert encode_pool.encode_deadline_s(2048, 2048) >= 10 * 1.37
    assert encode_pool.encode_deadline_s(64, 64) >= encode_pool.ENCODE_BASE_S


def test_an_unknown_format_is_the_same_error_as_in_process():
    async def main():
        pool = EncoderPool(1)
        try:
            await pool.encode(noise(8, 8, 1), 8, 8, "gif")
        finally:
            pool.close()

    with pytest.raises(InvalidRequest, match="format must be one of png, jpeg, webp; got 'gif'"):
        asyncio.run(main())


def test_a_pool_serves_every_event_loop_it_is_used_from():
    pool = EncoderPool(1)
    pixels = noise(16, 16, 2)
    try:
        for _ in range(2):  # asyncio.run makes a new loop each time
            data, _ = asyncio.run(pool.encode(pixels, 16, 16, "png"))
            assert data == encode_image(pixels, 16, 16, "png")
        assert pool.fallbacks == 0
    finally:
        pool.close()


def test_a_worker_that_cannot_start_falls_back_to_the_api_process(monkeypatch):
    monkeypatch.setattr(encode_pool.sys, "executable", "/nonexistent/python")
    pixels = noise(16, 16, 5)

    async def main():
        pool = EncoderPool(1)
        data, _ = await pool.encode(pixels, 16, 16, "png")
        return data, pool.fallbacks

    data, fallbacks = asyncio.run(main())
    assert data == encode_image(pixels, 16, 16, "png") and fallbacks == 1


def test_default_is_one_process_per_cpu_beyond_the_first(monkeypatch):
    monkeypatch.setattr(encode_pool, "available_cpus", lambda: 2)
    assert default_processes(-1) == 1
    monkeypatch.setattr(encode_pool, "available_cpus", lambda: 1)
    assert default_processes(-1) == 0
    monkeypatch.setattr(encode_pool, "available_cpus", lambda: 64)
    assert default_processes(-1) == 8
    assert default_processes(3) == 3 and default_processes(0) == 0
