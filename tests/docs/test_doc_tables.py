"""The measured tables in the docs are copies of benchmarks/results/*.md, so doc figures cannot drift.

Pages embed a results file between ``<!-- table: benchmarks/results/NAME.md -->`` and ``<!-- /table -->``;
``tools/sync_tables.py`` rewrites them. These tests fail while any copy is stale or a marker is broken, and check
that the pages' relative links (and their anchors) resolve.
"""

from __future__ import annotations

import importlib.util
import io
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("sync_tables", ROOT / "tools" / "sync_tables.py")
sync_tables = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("sync_tables", sync_tables)
_spec.loader.exec_module(sync_tables)

DOCS = sync_tables.doc_files(ROOT)
BLOCKS = [block for doc in DOCS for block in sync_tables.parse(doc.read_text(encoding="utf-8"), doc)[0]]
# pages whose links this file checks: the index, the technique pages, the comparison
LINKED_PAGES = [ROOT / "docs" / "README.md", ROOT / "docs" / "compare.md",
                *sorted((ROOT / "docs" / "techniques").glob("*.md"))]
# written by colleagues in parallel: a link to them is checked once they exist
PENDING = {ROOT / "docs" / "tutorials" / "README.md", ROOT / "docs" / "api" / "README.md"}


def _id(block) -> str:
    return f"{block.where(ROOT)}-{Path(block.path).name}"


def test_docs_embed_tables():
    assert BLOCKS, "no <!-- table: ... --> markers found under docs/: the parser or the pages broke"
    techniques = {b.doc.name for b in BLOCKS if b.doc.parent.name == "techniques"}
    assert len(techniques) >= 10, techniques


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_markers_are_well_formed(doc):
    _, problems = sync_tables.parse(doc.read_text(encoding="utf-8"), doc)
    assert not problems, "\n".join(f"{p.where(ROOT)}: {p.message}" for p in problems)


@pytest.mark.parametrize("block", BLOCKS, ids=_id)
def test_marker_names_an_existing_results_file(block):
    target = sync_tables.resolve(block.path, ROOT)
    assert target is not None, f"{block.where(ROOT)}: {block.path} lies outside the repository"
    assert target.is_file(), f"{block.where(ROOT)}: {block.path} does not exist"


@pytest.mark.parametrize("block", BLOCKS, ids=_id)
def test_table_equals_its_results_file(block):
    target = ROOT / block.path
    if not target.is_file():
        pytest.skip("missing file: reported by test_marker_names_an_existing_results_file")
    assert sync_tables.normalized(block.inner) == sync_tables.normalized(target.read_text(encoding="utf-8")), (
        f"{block.where(ROOT)}: the table differs from {block.path}; run `python tools/sync_tables.py`")


def test_sync_check_is_clean():
    """The exact form the tool writes (one blank line around the content), so `--check` passes in CI too."""
    out = io.StringIO()
    assert sync_tables.run(check=True, root=ROOT, out=out) == 0, out.getvalue()


# --- the tool itself, on a scratch tree ---------------------------------------------------------------------------

def _tree(tmp_path: Path, page: str, results: dict[str, str]) -> Path:
    for name, text in results.items():
        path = tmp_path / "benchmarks" / "results" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    doc = tmp_path / "docs" / "techniques" / "page.md"
    doc.parent.mkdir(parents=True)
    doc.write_text(page)
    return doc


def test_tool_rewrites_stale_tables_and_check_reports_them(tmp_path):
    page = ("# Page\n\n<!-- table: benchmarks/results/a.md -->\n| old |\n<!-- /table -->\n\ntext\n\n"
            "<!-- table: benchmarks/results/b.md -->\n\n| b |\n|---|\n\n<!-- /table -->\n")
    doc = _tree(tmp_path, page, {"a.md": "| a |\n|---|\n| 1 |\n", "b.md": "| b |\n|---|\n"})
    out = io.StringIO()
    assert sync_tables.run(check=True, root=tmp_path, out=out) == 1
    assert "docs/techniques/page.md:3: stale: benchmarks/results/a.md" in out.getvalue()
    assert "b.md" not in out.getvalue()
    assert doc.read_text() == page  # --check changes nothing
    assert sync_tables.run(check=False, root=tmp_path, out=io.StringIO()) == 0
    assert doc.read_text() == ("# Page\n\n<!-- table: benchmarks/results/a.md -->\n\n| a |\n|---|\n| 1 |\n\n"
                               "<!-- /table -->\n\ntext\n\n<!-- table: benchmarks/results/b.md -->\n\n| b |\n|---|\n\n"
                               "<!-- /table -->\n")
    assert sync_tables.run(check=True, root=tmp_path, out=io.StringIO()) == 0


def test_tool_reports_missing_files_and_broken_markers(tmp_path):
    page = ("<!-- table: benchmarks/results/missing.md -->\n<!-- /table -->\n"
            "<!-- table: ../outside.md -->\n<!-- /table -->\n"
            "<!-- table: benchmarks/results/a.md -->\n<!-- table: benchmarks/results/a.md -->\n<!-- /table -->\n"
            "<!-- /table -->\n"
            "<!-- table: benchmarks/results/a.md -->\n")
    _tree(tmp_path, page, {"a.md": "| a |\n"})
    out = io.StringIO()
    assert sync_tables.run(check=False, root=tmp_path, out=out) == 1
    text = out.getvalue()
    assert "page.md:1: error: benchmarks/results/missing.md does not exist" in text
    assert "page.md:3: error: ../outside.md lies outside the repository" in text
    assert "page.md:5: error: table marker for benchmarks/results/a.md is not closed" in text
    assert "page.md:8: error: closing table marker without an opening one" in text
    assert "page.md:9: error: table marker for benchmarks/results/a.md is never closed" in text


def test_tool_ignores_markers_in_code_fences(tmp_path):
    page = "```md\n<!-- table: benchmarks/results/missing.md -->\n<!-- /table -->\n```\n"
    _tree(tmp_path, page, {})
    assert sync_tables.parse(page, Path("page.md")) == ([], [])
    assert sync_tables.run(check=True, root=tmp_path, out=io.StringIO()) == 0


def test_cli_check_exit_status(tmp_path, capsys):
    _tree(tmp_path, "<!-- table: benchmarks/results/a.md -->\n<!-- /table -->\n", {"a.md": "| a |\n"})
    assert sync_tables.main(["--check", "--root", str(tmp_path)]) == 1
    assert "stale: benchmarks/results/a.md" in capsys.readouterr().out
    assert sync_tables.main(["--root", str(tmp_path)]) == 0
    assert sync_tables.main(["--check", "--root", str(tmp_path)]) == 0


# --- links ----------------------------------------------------------------------------------------------------------

LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    fence = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fence = not fence
        if fence:
            continue
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = _slug(m.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def _links(page: Path):
    fence = False
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith(("```", "~~~")):
            fence = not fence
        if fence:
            continue
        for m in LINK.finditer(line):
            target = m["target"]
            if not re.match(r"^[a-z]+:", target):  # skip http:, https:, mailto:
                yield number, target


@pytest.mark.parametrize("page", LINKED_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    if not page.is_file():
        pytest.fail(f"{page.relative_to(ROOT)} is missing")
    broken = []
    for number, target in _links(page):
        path_part, _, anchor = target.partition("#")
        path = (page.parent / path_part).resolve() if path_part else page
        if not path.exists():
            if path not in PENDING:
                broken.append(f"line {number}: {target} (no such file)")
            continue
        if anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"line {number}: {target} (no heading with anchor #{anchor})")
    assert not broken, f"{page.relative_to(ROOT)}:\n" + "\n".join(broken)
