"""How an exception raised while reading a body becomes the client's error (t2i_core/api/body_errors.py);
the routes themselves are in test_body_errors_e2e.py."""

from __future__ import annotations

import json

import pydantic
import pytest
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect

from t2i_core.api.body_errors import body_error
from t2i_core.common.errors import ClientClosed, InvalidRequest


def raised(make):
    try:
        make()
    except BaseException as exc:  # noqa: BLE001
        return exc
    raise AssertionError("nothing raised")


def starlette_400() -> None:
    """As Starlette raises it: a 400 while handling its MultiPartException, raised from the parser's error."""
    try:
        try:
            raise ValueError("Expected boundary character 45, got 103 at index 2")
        except ValueError as exc:
            raise MultiPartException("Invalid multipart data.") from exc
    except MultiPartException as exc:
        raise HTTPException(status_code=400, detail=exc.message)


class Model(pydantic.BaseModel):
    n: int


def test_a_damaged_form_names_the_parsers_reason():
    err = body_error(raised(starlette_400), "multipart/form-data; boundary=zz")
    assert isinstance(err, InvalidRequest) and err.code == "invalid_form"
    assert err.message == ("the multipart/form-data body cannot be read: Invalid multipart data "
                           "(Expected boundary character 45, got 103 at index 2)")


def test_invalid_json_in_a_validated_body_is_invalid_json():
    err = body_error(raised(lambda: Model.model_validate_json(b'{"n": 1,')))
    assert err.status == 400 and err.code == "invalid_json" and err.message.startswith("request body is not valid JSON: ")
    field = body_error(raised(lambda: Model.model_validate_json(b'{"n": "x"}')))
    assert field.param == "n" and field.code == "invalid_value"


@pytest.mark.parametrize("make, says", [
    (lambda: json.loads(b'{"a": \xff}'), "not valid utf-8 text: byte 0xff at position 6"),
    (lambda: json.loads("[" * 100_000 + "]" * 100_000), "nested too deeply"),
    (lambda: json.loads("9" * 5000), "Exceeds the limit (4300 digits)"),
])
def test_unreadable_json_is_a_400(make, says):
    err = body_error(raised(make))
    assert err.status == 400 and says in err.message and "sys.set_int_max_str_digits" not in err.message


def test_a_client_that_leaves_is_a_client_close_and_the_servers_faults_stay_exceptions():
    assert isinstance(body_error(ClientDisconnect()), ClientClosed)
    assert body_error(OSError(28, "No space left on device")) is None
    assert body_error(HTTPException(status_code=500)) is None
