"""The README is the journey and docs/ the reference: every relative link between them resolves.

README.md tells the journey (the two commands, laptop → MLflow UI → cluster → analysis) and links to one
file per reference topic under docs/. These checks keep it that way: each relative link or image in
README.md and docs/*.md names a file that exists (and, with a `#fragment`, a heading of that file, spelled
as GitHub spells heading anchors), and the README stays short enough to read as a journey.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
README_MAX_LINES = 220  # the journey; reference belongs in docs/

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where brackets are code, not links."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of `path`: lower case, punctuation dropped, spaces as hyphens."""
    seen: dict[str, int] = {}
    out = set()
    for line in re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _relative_links(path: Path) -> list[str]:
    return [t for t in LINK.findall(_prose(path.read_text())) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_an_existing_file_and_heading(path: Path) -> None:
    broken = []
    for target in _relative_links(path):
        file_part, _, fragment = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif fragment and dest.suffix == ".md" and fragment not in _anchors(dest):
            broken.append(f"{target} (no heading #{fragment} in {dest.relative_to(ROOT)})")
    assert not broken, f"{path.relative_to(ROOT)} links to what is not there: {broken}"


@pytest.mark.timeout(30)
def test_the_readme_stays_a_journey_and_links_every_reference_file() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move reference to a file under docs/ "
        "and link it from the README"
    )
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in _relative_links(README)}
    unlinked = [str(p.relative_to(ROOT)) for p in DOCS if p.resolve() not in linked]
    assert not unlinked, f"docs files the README does not link: {unlinked}"


@pytest.mark.timeout(30)
def test_the_link_check_sees_a_broken_link_and_a_missing_heading(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"")
    (tmp_path / "b.md").write_text("# B\n\n## The verdict: CE against PC-LC, it's tied\n")
    page = tmp_path / "a.md"
    page.write_text(
        "![a](images/a.png) [b](b.md#the-verdict-ce-against-pc-lc-its-tied) [web](https://example.org/x)\n"
        "`[not](a/link)` [gone](missing.md) [lost](b.md#nowhere)\n```\n[code](not/a/link)\n```\n"
    )
    links = _relative_links(page)
    assert links == ["images/a.png", "b.md#the-verdict-ce-against-pc-lc-its-tied", "missing.md", "b.md#nowhere"]
    assert "the-verdict-ce-against-pc-lc-its-tied" in _anchors(tmp_path / "b.md")
    assert "nowhere" not in _anchors(tmp_path / "b.md")
