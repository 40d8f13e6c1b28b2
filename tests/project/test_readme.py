"""The README is a short front door whose first block is the two commands; the reference is in docs/,
and every relative link (and its #anchor) in the README and docs/ points to something that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
#: the README stays a front door; the reference goes to docs/
MAX_README_LINES = 250
FENCE = re.compile(r"^[ \t]*(```|~~~).*?^[ \t]*\1[^\n]*$", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)


def prose(text: str) -> str:
    """The text without its fenced code blocks (a `](` in code is no link)."""
    return FENCE.sub("", text)


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation other than - and _ dropped, spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings (a repeated one gets -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    found = set()
    for match in HEADING.finditer(prose(path.read_text())):
        slug = anchor(match[2])
        found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return found


def relative_links(path: Path) -> list[str]:
    return [t for t in LINK.findall(prose(path.read_text())) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def test_readme_is_short() -> None:
    lines = len(README.read_text().splitlines())
    assert lines < MAX_README_LINES, f"README.md has {lines} lines; keep it under {MAX_README_LINES} (reference goes to docs/)"


def test_readme_starts_with_the_two_commands() -> None:
    text = README.read_text()
    first = FENCE.search(text)
    assert first is not None and "\n## " not in text[: first.start()], "the README's first block comes before any section"
    commands = [line.split("#", 1)[0].strip() for line in first[0].splitlines()[1:-1]]
    assert commands == ["bash scripts/serve.sh", "bash scripts/test.sh"], commands
    assert all((ROOT / c.split()[1]).is_file() for c in commands)


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_what_exists(path: Path) -> None:
    broken = []
    for target in relative_links(path):
        file_part, _, fragment = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target} (no file {linked.relative_to(ROOT) if linked.is_relative_to(ROOT) else linked})")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            broken.append(f"{target} (no heading with anchor #{fragment} in {linked.relative_to(ROOT)})")
    assert not broken, f"broken links in {path.relative_to(ROOT)}: {broken}"


def test_readme_links_every_doc() -> None:
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in relative_links(README)}
    missing = [str(d.relative_to(ROOT)) for d in DOCS if d.resolve() not in linked]
    assert not missing, f"docs the README's map does not link: {missing}"


def test_anchor_follows_github() -> None:
    assert anchor("A1111 clients (`/sdapi/v1`)") == "a1111-clients-sdapiv1"
    assert anchor("Creative controls: LoRA adapters, inpainting, ControlNet") == "creative-controls-lora-adapters-inpainting-controlnet"
