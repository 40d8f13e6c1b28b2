"""The state shared by a server's workers and, with Redis, by its replicas (``T2I_STATE``).

One interface (``store.StateStore``), backends in ``memory.py`` (one API worker and one engine
worker: the default), ``sqlite.py`` (several workers on one machine: a file in the server's run
folder) and Redis (several servers). What is kept, by whom, for how long:

| key                        | what                                   | written by            | read by                | lives |
| -------------------------- | -------------------------------------- | --------------------- | ---------------------- | ----- |
| ``task:<id>``              | a task's record (status, owner, input) | the API worker that took the submit; any worker's cancel | any API worker | until ``T2I_TASK_RESULT_TTL_S`` after it finished |
| ``task:<id>:result``       | a completed task's answer (the image)  | the task's API worker | any API worker (get)   | as its record; the oldest go first past ``T2I_TASK_STORE_MAX_BYTES`` |
| ``task:<id>:size``         | the size of its result, while counted  | completion            | the result's removal   | until its result is removed |
| ``task:<id>:canceled``     | a cancel was taken (the runner polls it) | any worker's cancel | the task's runner      | as the record |
| index ``tasks``            | task ids by creation time              | submit                | listings               | as the records |
| index ``tasks:owner:<o>``  | a caller's task ids by creation time   | submit                | the caller's listing   | as the records (the index goes a day after its last submit) |
| index ``tasks:expires``    | task ids by the time they may go       | submit, completion    | the sweep              | as the records |
| index ``tasks:with-result``| finished task ids with a kept result   | completion            | the size cap           | as the results |
| ``tasks:result-bytes``     | bytes of kept results                  | completion, removals  | the size cap           | always |
| ``runner:<id>``            | an API worker's lease (it runs tasks)  | that worker, every 5 s | readers of its tasks  | 20 s unless renewed |
| ``task:<id>:place``        | a waiting task's queue position and ETA | its API worker, every second (shared state only) | other workers' status/listing | 3 s unless rewritten |
| ``webhook:<id>``           | a webhook delivery (event, URL, body while pending, attempts, state); a task's started / final event has an id made from the task and the event (queued once) | the task's API worker; a final event: whoever writes the task's final status | any API worker (delivers it) | as its task |
| index ``task:<id>:webhooks``| a task's deliveries, by creation      | the task's API worker | the task's status      | as its task |
| index ``webhooks:due``     | pending deliveries by next attempt (a leased one: by its lease's end) | creation, each claim and attempt | every API worker's sender | until delivered or failed |
| ``idem:<key name>:<hash>`` | an Idempotency-Key's first request: a running marker, then its answer | the worker that took it | every worker (a retry) | the request's time limit while it runs; then ``T2I_IDEMPOTENCY_TTL_S`` |
| index ``idem:kept``, ``idem:bytes`` | kept answers by expiry, and their bytes | completion, removals | the byte cap (``T2I_IDEMPOTENCY_MAX_BYTES``) | as the answers; the counter always |
| ``limits:images:<name>:<minute>`` | images a key took in a minute   | admission (generate, task submit) | admission | 2 minutes |
| index ``limits:inflight:<name>`` | a key's requests in flight, by when each slot lapses | admission, its end | admission (``max_concurrent``) | each slot: the request's time limit and a minute |
| ``usage:<name>[:<day>]:<field>`` | a key's images, pixels, engine-ms, requests (in all, per UTC day) | every API worker, about once a second | ``GET /admin/usage`` | in all: always; per day: 40 days |
| index ``usage:keys``       | key names with usage, by last use      | every API worker      | ``GET /admin/usage``   | always |
| ``keys:generation``        | bumped when the keys file is reloaded  | the reloading worker  | every API worker (reloads too) | always |
"""
