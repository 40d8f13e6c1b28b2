"""The project's benchmark: ``python -m t2i_core bench --preset tiny``.

Three measurements in one run, on the same machine, so their ratios mean something:

- raw: the engine in process (no HTTP), images/s per batch size: the ceiling;
- served: a real ``bentoml serve``, C concurrent HTTP clients: images/s, latency percentiles and the
  images per engine batch;
- no batching: the same server with ``T2I_MAX_BATCH_SIZE=1`` (what a one-request-at-a-time server does).
"""
