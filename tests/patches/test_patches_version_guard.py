"""A library patch applies itself only to the version it was written for; elsewhere it warns once
and leaves the library's code as it is."""

from __future__ import annotations

import logging

import pytest

from t2i_core.patches import bentoml as bentoml_patches
from t2i_core.patches import diffusers as diffusers_patches
from t2i_core.patches import starlette as starlette_patches
from t2i_core.common import version_guard


@pytest.mark.parametrize("installed, tested, ok", [
    ("1.4.39", "1.4.39", True), ("1.4.40", "1.4.39", False), ("1.4.391", "1.4.39", False),
    ("0.42.1", "0.42", True), ("0.420.0", "0.42", False), ("0.43.0", "0.42", False),
])
def test_versions_match_exactly_or_by_prefix(installed, tested, ok):
    assert version_guard.matches(installed, tested) is ok


def test_the_installed_libraries_are_the_ones_the_patches_were_written_for():
    assert version_guard.written_for("bentoml", bentoml_patches.WRITTEN_FOR, "check")
    assert version_guard.written_for("diffusers", diffusers_patches.WRITTEN_FOR, "check")
    assert version_guard.written_for("starlette", starlette_patches.WRITTEN_FOR, "check")


def test_on_another_version_a_patch_warns_once_and_changes_nothing(monkeypatch, caplog):
    from _bentoml_sdk.method import APIMethod
    from bentoml._internal.server.http.traffic import TimeoutMiddleware
    from diffusers.hooks import group_offloading

    monkeypatch.setattr(version_guard, "version", lambda package: "99.0.0")
    monkeypatch.setattr(version_guard, "_warned", set())
    before = (APIMethod._local_call, TimeoutMiddleware.__call__, group_offloading._get_top_level_group_offload_hook)
    with caplog.at_level(logging.WARNING, logger="t2i.patches"):
        for _ in range(2):
            bentoml_patches.cache_local_callers()
            bentoml_patches.cancel_request_timers()
            diffusers_patches.skip_group_offload_lookup_until_used()
    after = (APIMethod._local_call, TimeoutMiddleware.__call__, group_offloading._get_top_level_group_offload_hook)
    assert after == before
    warnings = [r.getMessage() for r in caplog.records if r.name == "t2i.patches"]
    assert len(warnings) == 3, warnings  # one per patch, not one per call
    assert any("cache_local_callers" in w and "bentoml 1.4.39" in w and "99.0.0" in w for w in warnings)
