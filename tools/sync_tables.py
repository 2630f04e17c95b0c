#!/usr/bin/env python3
"""Rewrite the measured tables embedded in the docs from the files the benchmarks wrote.

A page embeds a results file between two marker lines, each alone on its line::

    <!-- table: benchmarks/results/NAME.md -->

    ...the content of benchmarks/results/NAME.md, rewritten by this tool...

    <!-- /table -->

The path is relative to the repository root. Everything between the markers is replaced by the file's content
with one blank line on each side (so the table renders as Markdown after the HTML comment). Markers inside fenced
code blocks are text, not markers.

    python tools/sync_tables.py            # rewrite every stale table in docs/**/*.md
    python tools/sync_tables.py --check    # change nothing; exit 1 and list what is stale or broken

Exit status: 0 when every table is (now) in sync, 1 when a table is stale (``--check``) or a marker is broken
(unclosed, nested, or naming a file that does not exist), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPEN = re.compile(r"^<!--\s*table:\s*(?P<path>\S+)\s*-->$")
CLOSE = re.compile(r"^<!--\s*/table\s*-->$")
FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})")


@dataclass(frozen=True)
class Block:
    """One embedded table: ``open_line``/``close_line`` are 0-based indices of the marker lines."""

    doc: Path
    open_line: int
    close_line: int
    path: str
    inner: str  # the text between the marker lines, line endings kept

    def where(self, root: Path = ROOT) -> str:
        return f"{_rel(self.doc, root)}:{self.open_line + 1}"


@dataclass(frozen=True)
class Problem:
    """A marker that cannot be synced: unclosed, nested, stray closing marker, or a missing/outside file."""

    doc: Path
    line: int  # 0-based
    message: str

    def where(self, root: Path = ROOT) -> str:
        return f"{_rel(self.doc, root)}:{self.line + 1}"


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def parse(text: str, doc: Path) -> tuple[list[Block], list[Problem]]:
    """The table blocks of one Markdown text, and the marker problems found on the way."""
    lines = text.splitlines(keepends=True)
    blocks: list[Block] = []
    problems: list[Problem] = []
    fence: str | None = None
    opened: tuple[int, str] | None = None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if opened is None:  # inside a block the old content is replaced wholesale: no fence tracking there
            m = FENCE.match(stripped)
            if m:
                if fence is None:
                    fence = m["fence"]
                elif stripped.startswith(fence) and stripped.strip(fence[0]) == "":
                    fence = None
                continue
            if fence is not None:
                continue
        m = OPEN.match(stripped)
        if m:
            if opened is not None:
                problems.append(Problem(doc, opened[0], f"table marker for {opened[1]} is not closed before "
                                                        f"the next one (line {i + 1})"))
            opened = (i, m["path"])
            continue
        if CLOSE.match(stripped):
            if opened is None:
                problems.append(Problem(doc, i, "closing table marker without an opening one"))
            else:
                start, path = opened
                blocks.append(Block(doc, start, i, path, "".join(lines[start + 1 : i])))
                opened = None
    if opened is not None:
        problems.append(Problem(doc, opened[0], f"table marker for {opened[1]} is never closed"))
    return blocks, problems


def resolve(path: str, root: Path = ROOT) -> Path | None:
    """The results file a marker names, or None when it points outside the repository."""
    target = (root / path).resolve()
    try:
        target.relative_to(root.resolve())
    except ValueError:
        return None
    return target


def render(results_text: str) -> str:
    """What belongs between the markers for a results file's text."""
    body = results_text.replace("\r\n", "\n").strip("\n")
    return "\n" + body + "\n\n"


def normalized(text: str) -> str:
    """A block's or results file's content without the blank lines around it (what the reader sees)."""
    return text.replace("\r\n", "\n").strip("\n")


def doc_files(root: Path = ROOT) -> list[Path]:
    """Every Markdown file under docs/."""
    return sorted(p for p in (root / "docs").rglob("*.md") if p.is_file())


def sync_text(text: str, doc: Path, root: Path = ROOT) -> tuple[str, list[Block], list[Problem]]:
    """``text`` with every table rewritten, the blocks that were stale, and the problems (left untouched)."""
    blocks, problems = parse(text, doc)
    lines = text.splitlines(keepends=True)
    stale: list[Block] = []
    for block in reversed(blocks):  # bottom up, so earlier line numbers stay valid
        target = resolve(block.path, root)
        if target is None:
            problems.append(Problem(doc, block.open_line, f"{block.path} lies outside the repository"))
            continue
        if not target.is_file():
            problems.append(Problem(doc, block.open_line, f"{block.path} does not exist"))
            continue
        wanted = render(target.read_text(encoding="utf-8"))
        if block.inner != wanted:
            stale.append(block)
            lines[block.open_line + 1 : block.close_line] = wanted.splitlines(keepends=True)
    problems.sort(key=lambda p: p.line)
    return "".join(lines), sorted(stale, key=lambda b: b.open_line), problems


def run(check: bool, root: Path = ROOT, docs: list[Path] | None = None, out=None) -> int:
    """Sync (or, with ``check``, only inspect) ``docs``; the exit status of the command."""
    out = sys.stdout if out is None else out
    status = 0
    n_blocks = 0
    for doc in docs if docs is not None else doc_files(root):
        text = doc.read_text(encoding="utf-8")
        new, stale, problems = sync_text(text, doc, root)
        n_blocks += len(parse(text, doc)[0])
        for problem in problems:
            print(f"{problem.where(root)}: error: {problem.message}", file=out)
            status = 1
        for block in stale:
            if check:
                print(f"{block.where(root)}: stale: {block.path}", file=out)
                status = 1
            else:
                print(f"{block.where(root)}: rewrote {block.path}", file=out)
        if not check and new != text:
            doc.write_text(new, encoding="utf-8")
    if status == 0:
        print(f"{n_blocks} tables {'in sync' if check else 'synced'}", file=out)
    elif check:
        print("run `python tools/sync_tables.py` to rewrite stale tables", file=out)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table is stale or broken")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root (default: this checkout)")
    parser.add_argument("docs", nargs="*", type=Path, help="Markdown files (default: docs/**/*.md)")
    args = parser.parse_args(argv)
    return run(args.check, args.root, args.docs or None)


if __name__ == "__main__":
    sys.exit(main())
