"""CORS allows every method the API's routes use (a browser app on another origin can cancel a task)."""

from __future__ import annotations

from t2i_core.api.guards import CORS_METHODS, cors_options
from t2i_core.common.config import Settings


def test_every_route_method_is_allowed():
    from t2i_core.api.surfaces import build_surfaces

    methods = {"POST", "GET", "PUT"}  # BentoML's routes: the APIs, task submit/status/get, task cancel (PUT)

    surfaces = build_surfaces(lambda: None, None)  # type: ignore[arg-type]
    for route in (route for s in surfaces.surfaces for route in s.app.routes):
        methods |= set(getattr(route, "methods", None) or ())
    allowed = set(cors_options(Settings(cors_origins="https://app.example"))["allow_methods"])
    assert methods - {"HEAD"} <= allowed, methods - allowed
    assert set(CORS_METHODS) == allowed


def test_cors_is_off_without_origins():
    assert cors_options(Settings(cors_origins="")) is None
