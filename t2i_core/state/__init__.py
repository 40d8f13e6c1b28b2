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
"""
