"""The one exception hierarchy of the product, and its mapping to HTTP.

Messages name the field, the limit and the value received. ``http_status`` is the only place where
an error becomes a status code.
"""

from __future__ import annotations

from typing import Any


class T2IError(Exception):
    """Base of every error the server reports to a client."""

    status: int = 500
    code: str = "internal_error"
    type: str = "server_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, Any]:
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.code}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "T2IError":
        """Rebuild an error reported across a process boundary (engine result to API)."""
        kind = _BY_CODE.get(str(data.get("code")), T2IError)
        err = kind(str(data.get("message", "")), param=data.get("param"))
        err.code = str(data.get("code") or kind.code)
        return err


class InvalidRequest(T2IError, ValueError):
    """Bad input. Also a ValueError, so pydantic validators may raise it as a validation error."""

    status = 400
    code = "invalid_value"
    type = "invalid_request_error"


class ContentFiltered(InvalidRequest):
    """The model's safety checker flagged the image (OpenAI answers such a request 400 with this code)."""

    code = "content_policy_violation"


class UnknownAdapter(InvalidRequest):
    """A request names a LoRA adapter the registry does not have, or one that does not fit its model."""

    code = "unknown_adapter"


class UnknownControlNet(InvalidRequest):
    """A request names a ControlNet the registry does not have, or one that does not fit its model."""

    code = "unknown_controlnet"


class NotFound(T2IError):
    status = 404
    code = "not_found"
    type = "invalid_request_error"


class UnknownModel(NotFound):
    code = "model_not_found"


class Gone(T2IError):
    """It existed and has expired (an image link past its time)."""

    status = 410
    code = "gone"
    type = "invalid_request_error"


class UnsupportedMediaType(T2IError):
    """A body in a format this route does not take (BentoML refuses its pickle format on a public route)."""

    status = 415
    code = "unsupported_media_type"
    type = "invalid_request_error"


class BodyTimeout(T2IError):
    """The request body did not arrive in time."""

    status = 408
    code = "body_timeout"
    type = "invalid_request_error"


class PayloadTooLarge(T2IError):
    status = 413
    code = "payload_too_large"
    type = "invalid_request_error"


class Conflict(T2IError):
    """The request conflicts with the resource's state (e.g. canceling a finished task)."""

    status = 409
    code = "conflict"
    type = "invalid_request_error"


class ModelBusy(Conflict):
    """The model cannot be unloaded now: requests are using it."""

    status = 409
    code = "model_busy"
    type = "invalid_request_error"


class Unauthorized(T2IError):
    status = 401
    code = "unauthorized"
    type = "authentication_error"


class Forbidden(T2IError):
    status = 403
    code = "forbidden"
    type = "permission_error"


class ModelUnavailable(T2IError):
    """The model is known but cannot be served now (weights absent, failed to load)."""

    status = 503
    code = "model_unavailable"
    type = "server_error"


class ShuttingDown(T2IError):
    """The server is draining before it exits: new work goes elsewhere."""

    status = 503
    code = "shutting_down"
    type = "server_error"


class EngineUnreachable(T2IError):
    """The API cannot connect to the engine (it is restarting after a crash, or the server is stopping)."""

    status = 503
    code = "engine_unavailable"
    type = "server_error"


class OutOfMemory(T2IError):
    """This image does not fit in accelerator memory, even alone."""

    status = 503
    code = "out_of_memory"
    type = "server_error"


class ImageTooLarge(T2IError):
    """The image is within the request limits but this engine can never hold its activations (its
    memory budget or device, less the model's weights): a smaller size is needed, not a retry."""

    status = 422
    code = "image_too_large"
    type = "invalid_request_error"


class RequestTimeout(T2IError):
    status = 504
    code = "timeout"
    type = "server_error"


class ClientClosed(T2IError):
    """The client went away; nobody reads this answer (499, as nginx logs it)."""

    status = 499
    code = "client_closed"
    type = "invalid_request_error"


class TaskCanceled(ClientClosed):
    """A task was canceled: its stored answer, read later, so a standard status (409)."""

    status = 409
    code = "task_canceled"


class TaskLost(T2IError):
    """The API worker running a task stopped (killed or restarted) before the task finished."""

    status = 503
    code = "task_lost"
    type = "server_error"


class StateUnavailable(T2IError):
    """The shared state (``T2I_STATE``) cannot be reached; what needs it answers 503 until it is back."""

    status = 503
    code = "state_unavailable"
    type = "server_error"


class TooManyRequests(T2IError):
    status = 429
    code = "rate_limited"
    type = "rate_limit_error"
    #: seconds the client is told to wait (Retry-After); None: ``T2I_RETRY_AFTER_S``
    retry_after_s: int | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 retry_after_s: int | None = None):
        super().__init__(message, param=param, code=code)
        self.retry_after_s = retry_after_s


class IdempotencyKeyReused(T2IError):
    """An Idempotency-Key sent again with another request (another body, route or method)."""

    status = 422
    code = "idempotency_key_reused"
    type = "invalid_request_error"


class DefaultModelChanged(T2IError):
    """The engine's default model is not the one the API resolved a request to (it was changed
    through another API worker); the API re-resolves the request against the engine's default."""

    #: the engine's default model (set by the API from the engine's result)
    model: str | None = None
    status = 503
    code = "default_model_changed"
    type = "server_error"


class EngineFailure(T2IError):
    status = 500
    code = "engine_failure"
    type = "server_error"


_BY_CODE: dict[str, type[T2IError]] = {
    c.code: c for c in (T2IError, InvalidRequest, NotFound, UnknownModel, Gone, Conflict, ModelBusy, Unauthorized, Forbidden, OutOfMemory, ImageTooLarge, RequestTimeout, ClientClosed, TaskCanceled, TooManyRequests, PayloadTooLarge, ModelUnavailable, EngineFailure, DefaultModelChanged, BodyTimeout, ContentFiltered, ShuttingDown,
              UnknownAdapter, UnknownControlNet, UnsupportedMediaType, TaskLost, StateUnavailable, IdempotencyKeyReused)
}


def client_error_for_status(status: int, message: str) -> T2IError:
    """The client error (4xx) a library reported with only a status and a message (BentoML's own)."""
    for kind in (Unauthorized, Forbidden, NotFound, Conflict, PayloadTooLarge, UnsupportedMediaType, TooManyRequests):
        if kind.status == status:
            return kind(message)
    return InvalidRequest(message)


def http_status(err: T2IError) -> int:
    """The HTTP status of an error: the single mapping from the hierarchy to HTTP."""
    return err.status


def describe_validation_errors(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """One message from pydantic error dicts, naming each field; and the first field's name.

    Our validators put the limit and the value in their message; pydantic's own messages are kept.
    """
    parts: list[str] = []
    first: str | None = None
    for err in errors:
        # a whole-model check names its field through the InvalidRequest it raised
        named = getattr((err.get("ctx") or {}).get("error"), "param", None)
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or named or "request"
        first = first or loc
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "missing":
            msg = f"{loc} is required"
        elif err.get("type") == "json_invalid":  # pydantic's "Invalid JSON: <where and why>"
            reason = msg.split(":", 1)[1].strip() if ":" in msg else ""
            msg = f"request body is not valid JSON: {reason}" if reason else "request body is not valid JSON"
            first = None
        parts.append(msg if loc in msg else f"{loc}: {msg}")
    return "; ".join(parts) or "invalid request", first
