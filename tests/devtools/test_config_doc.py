"""docs/configuration.md is what ``python -m t2i_core config-doc`` makes from ``Settings``, and it
documents every ``T2I_*`` variable the server's code names."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from t2i_core.common.config import Settings
from t2i_core.devtools.config_doc import DOC_PATH, comment_groups, documented_variables, render, write

ROOT = Path(__file__).resolve().parents[2]
VARIABLE = re.compile(r"\bT2I_[A-Z0-9_]*[A-Z0-9]\b")


def code_variables() -> dict[str, str]:
    """Every ``T2I_*`` name in the server's Python code (t2i_core/ and service.py), with a file naming it."""
    files = [ROOT / "service.py", *sorted((ROOT / "t2i_core").rglob("*.py"))]
    found: dict[str, str] = {}
    for path in files:
        for name in VARIABLE.findall(path.read_text()):
            found.setdefault(name, str(path.relative_to(ROOT)))
    return found


def test_committed_file_is_what_the_generator_makes() -> None:
    committed = (ROOT / DOC_PATH).read_text()
    assert committed == render(), (
        f"{DOC_PATH} is out of date with t2i_core/common/config.py: run `python -m t2i_core config-doc` and commit it"
    )


def test_every_variable_the_code_names_is_documented() -> None:
    doc = (ROOT / DOC_PATH).read_text()
    missing = {name: where for name, where in code_variables().items() if f"`{name}`" not in doc}
    assert not missing, (
        f"T2I_* variables named in the code but not in {DOC_PATH} (a Settings field, or add them to "
        f"OTHER_VARIABLES in t2i_core/devtools/config_doc.py, then run `python -m t2i_core config-doc`): {missing}"
    )


def test_every_settings_field_has_its_comment() -> None:
    grouped = [name for group in comment_groups((ROOT / "t2i_core/common/config.py").read_text()) for name in group.fields]
    assert grouped == [f.name for f in dataclasses.fields(Settings)]
    assert {f"T2I_{f.name.upper()}" for f in dataclasses.fields(Settings)} <= documented_variables()


def test_write_puts_the_text_under_docs(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    assert write(tmp_path).read_text() == render()
