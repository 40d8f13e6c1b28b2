"""An image-encoding process: reads raw RGB jobs on stdin, writes encoded images on stdout.

Run as ``python -m t2i_core.api.images.encoder_process`` by ``encode_pool.EncoderPool``. It imports Pillow and
nothing heavy. Frames (little-endian):

- job:   ``<QIIBBII`` job id, width, height, format code, JPEG/WebP quality (0: default), pixel bytes,
  parameters bytes; then the pixels,
  then the generation parameters to write into the file (UTF-8; empty: none)
- reply: ``<QBdI`` job id, ok (1) or failed (0), seconds encoding took, data bytes; then the encoded
  image, or the error message (UTF-8) when it failed

It exits when stdin closes (its API process ended) and ignores SIGINT (Ctrl-C of ``bentoml serve``
reaches the whole process group; the API process ends it by closing the pipe).
"""

from __future__ import annotations

import os
import signal
import struct
import sys
from typing import BinaryIO

from t2i_core.api.images.codecs import MEDIA_TYPES

JOB = struct.Struct("<QIIBBII")
REPLY = struct.Struct("<QBdI")
FORMATS = tuple(MEDIA_TYPES)  # a format travels as its index here


def read_exact(stream: BinaryIO, size: int) -> bytes | None:
    """``size`` bytes, or None at the end of the stream."""
    chunks, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def serve(inp: BinaryIO, out: BinaryIO) -> None:
    from t2i_core.api.images.codecs import timed_encode

    while (header := read_exact(inp, JOB.size)) is not None:
        job, width, height, code, quality, size, text_size = JOB.unpack(header)
        pixels = read_exact(inp, size)
        text = read_exact(inp, text_size) if text_size else b""
        if pixels is None or text is None:
            return
        try:
            (data, seconds), ok = timed_encode(pixels, width, height, FORMATS[code], text.decode("utf-8"), quality), 1
        except Exception as exc:  # noqa: BLE001 - the API process raises it for the request
            data, seconds, ok = f"{type(exc).__name__}: {exc}".encode(), 0.0, 0
        out.write(REPLY.pack(job, ok, seconds, len(data)))
        out.write(data)
        out.flush()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The replies go to the original stdout; anything printed (a library's warning) goes to stderr.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    serve(sys.stdin.buffer, out)


if __name__ == "__main__":
    main()
