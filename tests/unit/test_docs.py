"""The documentation a clone holds: every link in README.md and docs/ points at a file
of the repository (or the web), and the semantics page is there."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_links_stay_inside_the_repository():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert ROOT / "docs" / "SEMANTICS.md" in pages
    for page in pages:
        for target in LINK.findall(page.read_text()):
            if re.match(r"^[a-z]+://", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            assert path.is_relative_to(ROOT), f"{page.name} links outside: {target}"
            assert path.exists(), f"{page.name} links to a missing file: {target}"


def test_readme_points_at_the_semantics():
    readme = (ROOT / "README.md").read_text()
    assert "](docs/SEMANTICS.md)" in readme
    assert "../" not in "".join(LINK.findall(readme))
    semantics = (ROOT / "docs" / "SEMANTICS.md").read_text()
    sections = re.findall(r"^## (.+)$", semantics, re.M)
    assert sections[0] == "Tenets"
    for needed in ("The mapping", "Writes", "Rename", "Outside writers", "Crashes",
                   "The cache", "Errors", "Operating it"):
        assert needed in sections, needed
