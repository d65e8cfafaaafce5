"""The README and docs/: a newcomer's page that stays short, and links that lead somewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lowercased, punctuation dropped, spaces to hyphens."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    found = set()
    for heading in re.findall(r"^#+ (.+)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


def test_the_readme_is_what_a_newcomer_needs():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 400
    for section in ("## Quick start", "## A tour of the API", "## Where to read more"):
        assert section in text
    assert "make run" in text and "make test" in text


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_link_leads_to_a_file_and_heading_that_exist(page: Path):
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    broken = []
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists() or (
            anchor and linked.suffix == ".md" and anchor not in anchors(linked)
        ):
            broken.append(target)
    assert broken == []


def test_every_page_in_docs_is_linked_from_the_readme():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    unlinked = [p.name for p in PAGES[1:] if f"docs/{p.name}" not in text]
    assert unlinked == []


def test_the_readmes_newman_command_is_the_one_docs_check_runs():
    """`npx --yes` (no prompt outside a terminal) and the newman `make docs-check` runs."""
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    docs_check = (ROOT / "tests" / "system" / "test_docs.py").read_text(encoding="utf-8")
    newman = re.search(r'^NEWMAN = "(newman@[\d.]+)"$', docs_check, re.M)
    assert newman, "tests/system/test_docs.py pins newman"
    assert f"npx --yes {newman[1]} run marketplace.postman_collection.json" in readme
