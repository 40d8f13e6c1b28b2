"""What a task's submit may say beside the fields of /generate: its webhook and its queue class.

    webhook            URL its events are POSTed to (default: its key's webhook_url in the keys file)
    webhook_events     which: started, progress, completed, failed, cancelled (default: all but progress)
    response_format    how ``completed`` carries the image: "url" (a link, kept T2I_IMAGE_URL_TTL_S) or
                       "b64_json" (the image itself, base64)
    priority           "batch" (the default for tasks) or "interactive" (when its key's class allows)
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

from t2i_core.api.webhooks.events import DEFAULT_EVENTS, check_events
from t2i_core.common.errors import InvalidRequest


class TaskOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    webhook: str | None = None
    webhook_events: tuple[str, ...] | None = None
    response_format: Literal["url", "b64_json"] = "url"
    priority: Literal["interactive", "batch"] = "batch"

    @field_validator("webhook_events", mode="before")
    @classmethod
    def _events(cls, value: Any) -> Any:
        return None if value is None else check_events(value, "webhook_events")


class TaskWebhook(BaseModel):
    """A task's webhook, as kept in its record (the secret never is: its key's name signs)."""

    url: str
    events: tuple[str, ...] = DEFAULT_EVENTS
    response_format: Literal["url", "b64_json"] = "url"
    #: the base of image links in ``completed`` (T2I_PUBLIC_URL, else the URL the submit came to)
    base_url: str = ""


FIELDS = frozenset(TaskOptions.model_fields)


def split_options(data: dict[str, Any]) -> tuple[dict[str, Any], TaskOptions]:
    """The submit's fields of /generate, and its task options (InvalidRequest naming a bad one)."""
    given = {k: data[k] for k in FIELDS if k in data}
    rest = {k: v for k, v in data.items() if k not in FIELDS}
    if isinstance(given.get("webhook_events"), str):
        given["webhook_events"] = given["webhook_events"].split(",")  # a form field
    try:
        options = TaskOptions.model_validate(given)
    except ValueError as exc:
        errors = getattr(exc, "errors", lambda **_: [])(include_url=False)
        first = errors[0] if errors else {"loc": ("webhook",), "msg": str(exc)}
        field = str(first["loc"][0]) if first.get("loc") else "webhook"
        raise InvalidRequest(f"{field}: {first['msg']}; got {given.get(field)!r}", param=field) from None
    return rest, options
