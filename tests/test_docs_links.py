"""Every relative link in the README and docs/ resolves: the file exists and, for `file#anchor`, the file
has a heading whose GitHub anchor is that name (a newcomer who follows a link lands where it says)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "data" / "README.md"]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return {github_anchor(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


def _shown(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def broken_links(path: Path) -> list[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked (no network in tests)
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target} (no file {_shown(dest)})")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading with anchor #{anchor} in {_shown(dest)})")
    return broken


def test_github_anchor_matches_githubs_rule() -> None:
    assert github_anchor("Demo (`dt-eva demo`)") == "demo-dt-eva-demo"
    assert github_anchor("Study I: a confound (disclosed 2026-12-04)") == "study-i-a-confound-disclosed-2026-12-04"


def test_every_relative_link_in_readme_and_docs_resolves() -> None:
    problems = {str(p.relative_to(ROOT)): broken_links(p) for p in DOCS if p.exists()}
    assert {k: v for k, v in problems.items() if v} == {}


def test_readme_links_to_every_docs_page() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    linked = {Path(t.partition("#")[0]).name for t in LINK.findall(readme)}
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if p.name not in linked]
    assert missing == []


def test_a_missing_file_and_a_missing_anchor_are_reported(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [gone](nofile.md) [bad](#nope)\n```\n[fenced](ignored.md)\n```\n")
    assert [b.split(" ")[0] for b in broken_links(page)] == ["nofile.md", "#nope"]
