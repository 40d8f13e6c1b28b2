"""Damaged request bodies on every route that reads one: each is a 400 naming the problem, in the error
body shape of the route's surface, never a 5xx; the server logs each as one request line with its
4xx status (no traceback, no ERROR line); a client that leaves mid-body is logged as a client close.

One server (the session's) for the whole table: every (route, body) pair is sent once, then checked.
A damaged task submit is refused at once too (no task is made that fails later).
"""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from conftest import ADMIN_KEY

pytestmark = pytest.mark.e2e

B = "zz"
MULTIPART = f"multipart/form-data; boundary={B}"
PROMPT = b'Content-Disposition: form-data; name="prompt"'


def multipart(*parts: tuple[bytes, bytes], closed: bool = True) -> bytes:
    body = b"".join(f"--{B}\r\n".encode() + head + b"\r\n\r\n" + value + b"\r\n" for head, value in parts)
    return body + (f"--{B}--\r\n".encode() if closed else b"")


#: name -> (body, Content-Type, words one of which the error message must hold, case-insensitive)
BODIES: dict[str, tuple[bytes, str, tuple[str, ...]]] = {
    "garbage multipart": (b"garbage", MULTIPART, ("multipart", "JSON")),
    "truncated multipart": (multipart((PROMPT, b"a lighthouse at dawn"), closed=False)[:-12], MULTIPART,
                            ("closing boundary", "JSON")),
    "no closing boundary": (multipart((PROMPT, b"a lighthouse"), closed=False), MULTIPART, ("closing boundary", "JSON")),
    "empty multipart": (b"", MULTIPART, ("closing boundary", "JSON object")),
    "part header garbage": (f"--{B}\r\nContent-Disposition: garbage\r\n\r\nx\r\n--{B}--\r\n".encode(), MULTIPART,
                            ("name", "JSON")),
    "part header without colon": (f"--{B}\r\nnot a header\r\n\r\nx\r\n--{B}--\r\n".encode(), MULTIPART,
                                  ("header", "JSON")),
    "boundary mismatch": (multipart((PROMPT, b"x")).replace(B.encode(), b"yy"), MULTIPART, ("boundary", "JSON")),
    "non-UTF-8 text field": (multipart((PROMPT, b"caf\xe9 \xff")), MULTIPART, ("UTF-8",)),
    "file part for a text field": (multipart((PROMPT + b'; filename="p.txt"\r\nContent-Type: text/plain', b"\xff\xfe")),
                                   MULTIPART, ("prompt", "image", "UTF-8")),
    "JSON sent as multipart": (b'{"prompt": "x"}', MULTIPART, ("multipart", "image")),
    "form-urlencoded garbage": (b"%%%\xff\xfe=&&=%zz", "application/x-www-form-urlencoded", ("UTF-8",)),
    "form-urlencoded non-UTF-8 escapes": (b"prompt=%ff%fe", "application/x-www-form-urlencoded", ("UTF-8", "JSON")),
    "invalid JSON": (b'{"prompt": "x",', "application/json", ("JSON",)),
    "JSON nested too deeply": (b"[" * 100_000 + b"]" * 100_000, "application/json", ("nested too deeply",)),
    "JSON object nested too deeply": (b'{"a":' * 5000 + b"1" + b"}" * 5000, "application/json", ("nested too deeply",)),
    "JSON not an object": (b"[1, 2]", "application/json", ("object",)),
    "non-UTF-8 JSON": (b'{"prompt": "caf\xe9"}', "application/json", ("UTF-8", "JSON")),
    "NaN in JSON": (b'{"prompt": "x", "seed": NaN}', "application/json", ("NaN", "seed")),
    "5000-digit number": (b'{"prompt": "x", "seed": ' + b"9" * 5000 + b"}", "application/json", ("JSON", "digit")),
    "empty JSON body": (b"", "application/json", ("prompt", "JSON object", "model", "init_images", "image")),
    "binary with a wrong Content-Type": (b"\x89PNG\r\n\x1a\n\x00\x00", "image/png", ("JSON", "UTF-8")),
}

#: route -> surface (the shape of its error body)
ROUTES = {
    "/generate": "native", "/edit": "native", "/tasks/generate": "native", "/tasks/generate/submit": "native",
    "/v1/images/generations": "openai", "/v1/images/edits": "openai", "/admin/default": "openai",
    "/sdapi/v1/txt2img": "a1111", "/sdapi/v1/img2img": "a1111", "/sdapi/v1/options": "a1111",
    "/api/image/generate": "replaced", "/api/image/edit": "replaced", "/generate-image": "replaced", "/image/generate": "replaced",
}
#: the routes that read multipart bodies; the others read JSON whatever the Content-Type says, so a valid
#: JSON body sent as multipart is damaged only here
FORM_ROUTES = {"/generate", "/edit", "/tasks/generate", "/tasks/generate/submit", "/v1/images/edits"}
CASES = [(route, name) for route in ROUTES for name in BODIES
         if name != "JSON sent as multipart" or route in FORM_ROUTES]


def message_of(surface: str, body: object) -> str:
    """The error message, after checking that ``body`` has the surface's error shape."""
    assert isinstance(body, dict), body
    if surface == "native":
        assert set(body) == {"error", "param", "code"} and isinstance(body["error"], str), body
        return body["error"]
    if surface == "openai":
        error = body["error"]
        assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(error), body
        return error["message"]
    if surface == "a1111":
        assert {"error", "detail", "body", "errors"} <= set(body), body
        return body["detail"]
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    return body["error"]


def request_id(route: str, name: str) -> str:
    return "bad-" + f"{route}-{name}".replace("/", "_").replace(" ", "_")


def log_lines(text: str) -> list[dict]:
    lines = []
    for line in text.splitlines():
        if line.startswith('{"ts"'):
            lines.append(json.loads(line))
    return lines


def wait_for_ids(server, since: int, ids: set[str]) -> str:
    """The log written after ``since`` once every id in ``ids`` has its line (written after the answer)."""
    for _ in range(100):
        text = server.log()[since:]
        found = {line.get("request_id") for line in log_lines(text)}
        if ids <= found:
            return text
        time.sleep(0.1)
    return server.log()[since:]


@pytest.fixture(scope="module")
def answers(server):
    """Every (route, body) of the table sent once: the answers, and the log written meanwhile."""
    since = len(server.log())
    got = {}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for route, name in CASES:
            body, content_type, _ = BODIES[name]
            headers = {"content-type": content_type, "x-request-id": request_id(route, name),
                       "authorization": f"Bearer {ADMIN_KEY}"}  # the admin route reads its body after the key
            got[(route, name)] = client.post(route, content=body, headers=headers)
    log = wait_for_ids(server, since, {request_id(route, name) for route, name in CASES})
    return got, log


@pytest.mark.parametrize("route, name", CASES)
def test_a_damaged_body_is_a_400_naming_the_problem(answers, route, name):
    r = answers[0][(route, name)]
    assert r.status_code == 400, (r.status_code, r.text[:500])
    message = message_of(ROUTES[route], r.json())
    words = BODIES[name][2]
    assert any(w.lower() in message.lower() for w in words), (words, message)


def test_damaged_bodies_are_logged_as_one_client_error_line_each(answers):
    _, log = answers
    assert "Traceback" not in log, log[-4000:]
    assert not [line for line in log.splitlines() if "[ERROR]" in line or "[WARNING]" in line], log[-4000:]
    lines = log_lines(log)
    for route, name in CASES:
        mine = [line for line in lines if line.get("request_id") == request_id(route, name)]
        assert len(mine) == 1 and 400 <= mine[0]["status"] < 500, (route, name, mine)
        assert mine[0]["route"] == route and mine[0].get("error"), mine


@pytest.mark.parametrize("route", ["/generate", "/edit", "/tasks/generate"])
def test_a_pickle_body_on_a_native_route_is_a_415_without_a_traceback(server, route):
    since = len(server.log())
    r = httpx.post(f"{server.url}{route}", content=b"\x80\x04K\x01.", timeout=30,
                   headers={"content-type": "application/vnd.bentoml+pickle", "x-request-id": f"pickle-{route[1:]}"})
    assert r.status_code == 415 and "pickle" in message_of("native", r.json()), r.text
    log = wait_for_ids(server, since, {f"pickle-{route[1:]}"})
    assert "Traceback" not in log and "[ERROR]" not in log, log[-3000:]


def leave_mid_body(server, route: str, rid: str, content_type: str, partial: bytes) -> None:
    """Announce a 10,000-byte body, send ``partial`` of it, and close the connection."""
    head = (f"POST {route} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: 10000\r\n"
            f"X-Request-ID: {rid}\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(head + partial)


@pytest.mark.parametrize("route, content_type, partial", [
    ("/generate", "application/json", b'{"prompt": "a li'),
    ("/edit", MULTIPART, multipart((PROMPT, b"x"), closed=False)),
    ("/v1/images/edits", MULTIPART, multipart((PROMPT, b"x"), closed=False)),
    ("/sdapi/v1/options", "application/json", b'{"sd_model'),
    ("/admin/default", "application/json", b'{"mod'),
], ids=["generate", "edit", "v1-edits", "a1111-options", "admin-default"])
def test_a_client_that_leaves_mid_body_is_logged_as_a_client_close(server, route, content_type, partial):
    since = len(server.log())
    rid = "leaves-" + route.replace("/", "_")
    leave_mid_body(server, route, rid, content_type, partial)
    log = wait_for_ids(server, since, {rid})
    (line,) = [line for line in log_lines(log) if line.get("request_id") == rid]
    assert line["status"] == 499 and line["error"] == "client_closed", line
    assert "Traceback" not in log and "[ERROR]" not in log, log[-3000:]
