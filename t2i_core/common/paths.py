"""Public paths that several layers classify (error shapes, guards, log and metric labels).

No imports: every module may use it.
"""

from __future__ import annotations

TASK_ROUTE = "/tasks/generate"
#: the replaced servers' routes (answer errors as ``{"error": message}``)
REPLACED_SERVER_PATHS = frozenset({"/api/image/generate", "/api/image/edit", "/generate-image", "/image/generate"})
#: the AUTOMATIC1111 web UI API (answers errors as A1111 does: ``{"error", "detail", "body", "errors"}``)
A1111_PREFIX = "/sdapi/v1/"
#: routes that make images: counted against ``T2I_MAX_IN_FLIGHT``
GENERATION_PATHS = frozenset(
    {"/generate", "/edit", "/v1/images/generations", "/v1/images/edits", TASK_ROUTE, f"{TASK_ROUTE}/submit",
     f"{TASK_ROUTE}/retry",
     f"{A1111_PREFIX}txt2img", f"{A1111_PREFIX}img2img"}
) | REPLACED_SERVER_PATHS
#: the task paths that start a task: its key's ``max_concurrent`` slot is taken there, for as long as the
#: task runs (tasks/routes.py), not by the guard for the request (a plain POST to TASK_ROUTE runs like /generate)
TASK_STARTS = frozenset({f"{TASK_ROUTE}/submit", f"{TASK_ROUTE}/retry"})
#: route label values for metrics (bounded); any other path is "other"
KNOWN_ROUTES = GENERATION_PATHS | {"/stats", "/v1/models", "/v1/adapters", "/v1/controlnets"} | {
    f"{TASK_ROUTE}/{action}" for action in ("status", "get", "cancel", "progress", "retry", "list")
}
