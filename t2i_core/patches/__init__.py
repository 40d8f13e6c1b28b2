"""Patches of library internals and process tweaks, in one room.

- ``bentoml``: BentoML 1.4.39 costs and bugs (session renewal, media types, canceled tasks, tracing
  middleware, per-access method wrappers, request timers);
- ``diffusers``: diffusers 0.42's group-offloading lookup on every pipeline call;
- ``uvicorn``: uvicorn 0.54's httptools protocol reads request headers without a size or time bound;
- ``openmp``: libgomp's spin after each parallel region (an environment variable, set before torch loads);
- ``gc_freeze``: the API process's start-up objects kept out of full garbage collections.

Each library patch says what it fixes, what it was measured to give, and the upstream issue where
one exists, and applies itself only to the library version it was written for
(``version_guard.written_for``); on any other version it logs one warning and changes nothing.
"""
