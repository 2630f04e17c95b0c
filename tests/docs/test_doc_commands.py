"""The shell commands of the docs run, and the tutorials' links lead somewhere.

Every ``$ `` line inside a ```` ```console ```` block of ``docs/**/*.md`` (the generated ``docs/api`` aside) is
run, in the order of the page,
by ``bash`` in a fresh temporary folder per page. Commands that write files put them in a relative ``--out``
folder, which then lands in that temporary folder; the repository folders a command reads (``examples/``) are
linked into it. The virtual environment's ``bin`` comes first on ``PATH`` and ``HF_HUB_OFFLINE=1`` is set, as in
``make test``; ``OMP_NUM_THREADS`` defaults to 1. A command passes when it exits 0; its output is not compared (timings and the 10,000-image
accuracies the commands print are shown on the pages for illustration).

The Python blocks of the same pages are doctests that pytest collects itself (``--doctest-glob=*.md``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TUTORIALS = ROOT / "docs" / "tutorials"
# repository folders that tutorial commands read, linked into each page's working folder
LINKED = ("examples",)
TIMEOUT_S = 600


def console_commands(text: str) -> list[str]:
    """The ``$ `` command lines of the ```` ```console ```` blocks of a Markdown text, in order.

    Example:
        >>> console_commands("```console\\n$ lowbit list\\nmodels: ...\\n```\\n```sh\\n$ not this\\n```\\n")
        ['lowbit list']
    """
    commands, fence = [], None
    for line in text.splitlines():
        stripped = line.strip()
        if fence is None:
            if stripped.startswith("```"):
                fence = stripped[3:].strip() or "text"
        elif stripped == "```":
            fence = None
        elif fence == "console" and stripped.startswith("$ "):
            commands.append(stripped[2:].strip())
    return commands


DOCS = ROOT / "docs"
# shell fences that would show commands nobody runs: docs use ```console with `$ ` lines instead
_UNRUN_SHELL = re.compile(r"^\s*```(sh|bash|shell|zsh)\s*$", re.MULTILINE)


def _pages() -> list[Path]:
    return sorted(TUTORIALS.glob("*.md"))


def _doc_pages() -> list[Path]:
    """Every hand-written page under docs/ (the generated API reference holds no commands)."""
    return sorted(p for p in DOCS.rglob("*.md") if "api" not in p.relative_to(DOCS).parts[:1])


def _pages_with_commands() -> list[Path]:
    return [page for page in _doc_pages() if console_commands(page.read_text(encoding="utf-8"))]


def test_no_shell_blocks_outside_console_fences() -> None:
    """A ```sh block is not run by the test below; every shell command in the docs must be in a console fence."""
    found = [f"{p.relative_to(ROOT)}" for p in _doc_pages() if _UNRUN_SHELL.search(p.read_text(encoding="utf-8"))]
    assert not found, f"shell blocks that CI would not run (use ```console and `$ ` lines): {found}"


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    env["PATH"] = os.pathsep.join([str(ROOT / ".venv" / "bin"), str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("COLUMNS", "120")  # rich tables: a fixed width instead of the 80 columns of no terminal
    # one intra-op thread, as the pages' doctests use (docs/tutorials/conftest.py): steady on a shared machine
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def test_tutorials_have_commands() -> None:
    """The pages exist and hold commands: a moved folder or a renamed fence must not make the test below vacuous."""
    assert _pages(), f"no tutorials under {TUTORIALS}"
    assert sum(len(console_commands(p.read_text(encoding="utf-8"))) for p in _pages()) >= 5


@pytest.mark.slow
@pytest.mark.parametrize("page", _pages_with_commands(), ids=lambda p: str(p.relative_to(DOCS)))
def test_console_commands_run(page: Path, tmp_path: Path) -> None:
    for name in LINKED:
        (tmp_path / name).symlink_to(ROOT / name, target_is_directory=True)
    env = _environment()
    for command in console_commands(page.read_text(encoding="utf-8")):
        done = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=TIMEOUT_S)
        if done.returncode != 0:
            pytest.fail(f"{page.name}: `{command}` exited {done.returncode}\n--- stdout (end)\n{done.stdout[-3000:]}"
                        f"\n--- stderr (end)\n{done.stderr[-3000:]}")


# ---------------------------------------------------------------------------------------------------------------
# links

_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (hyphens and underscores kept), spaces to
    hyphens.

    Example:
        >>> _slug("Binary GEMM (issue #7)"), _slug("`qat.fit`: the trainer")
        ('binary-gemm-issue-7', 'qatfit-the-trainer')
    """
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of a Markdown text's headings (outside code fences), duplicates numbered as GitHub does.

    Example:
        >>> sorted(anchors("# A b\\n## Integer speed (issue #4)\\n```\\n# not a heading\\n```\\n## A b\\n"))
        ['a-b', 'a-b-1', 'integer-speed-issue-4']
    """
    seen: dict[str, int] = {}
    found, fenced = set(), False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            fenced = not fenced
            continue
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if fenced or not match:
            continue
        slug = _slug(match.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def _prose(text: str) -> str:
    """The text outside code fences (links inside code are code)."""
    kept, fenced = [], False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            kept.append(line)
    return "\n".join(kept)


@pytest.mark.parametrize("page", _pages(), ids=lambda p: p.name)
def test_links_resolve(page: Path) -> None:
    """Relative links name an existing file, and an anchor names one of its headings."""
    broken = []
    for target in _LINK.findall(_prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text(encoding="utf-8")):
            broken.append(f"{target}: no heading with anchor #{anchor} in {file.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)
