"""The API reference (docs/api, written by tools/api_reference.py from the docstrings): current, complete, and loud
about a public name without a docstring."""

import importlib
import importlib.util
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "api_reference.py"
DOCS_API = ROOT / "docs" / "api"
REGENERATE = ".venv/bin/python tools/api_reference.py"


@pytest.fixture(scope="module")
def tool():
    """tools/api_reference.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location("_api_reference_under_test", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """The pages as the command writes them now, from a fresh interpreter, into a temporary folder."""
    out = tmp_path_factory.mktemp("api")
    result = subprocess.run([sys.executable, str(TOOL), "--out", str(out)], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, f"{TOOL.name} failed:\n{result.stdout}\n{result.stderr}"
    return out


def test_checked_in_pages_are_current(tool, generated):
    pages = {path.name: path.read_bytes().decode("utf-8") for path in sorted(generated.glob("*.md"))}
    stale = tool.stale_pages(pages, DOCS_API)
    assert not stale, (
        f"docs/api is stale: the docstrings changed since it was generated ({'; '.join(stale)}).\n"
        f"Regenerate it with `{REGENERATE}` and commit docs/api ({REGENERATE} --check lists what differs)."
    )


def test_every_exported_name_is_on_its_page(tool, generated):
    modules = tool.page_modules("lowbit")
    assert {path.name for path in generated.glob("*.md")} == {f"{m}.md" for m in modules} | {"README.md"}
    for expected in ("lowbit", "lowbit.functional", "lowbit.observers", "lowbit.flows", "lowbit.nn", "lowbit.spec",
                     "lowbit.compress", "lowbit.kernels.conv", "lowbit.functional.calibration"):
        assert expected in modules
    index = (generated / "README.md").read_text(encoding="utf-8")
    for module_name in modules:
        assert f"]({module_name}.md)" in index, f"README.md does not link {module_name}.md"
        module = importlib.import_module(module_name)
        page = (generated / f"{module_name}.md").read_text(encoding="utf-8")
        assert f"../../{Path(module.__file__).resolve().relative_to(ROOT).as_posix()}" in page  # source link
        missing = [name for name in tool.public_names(module) if f"\n### `{name}`\n" not in page]
        assert not missing, f"{module_name}.md lacks {missing} from {module_name}.__all__"
    for path in generated.glob("*.md"):
        assert not re.search(r" at 0x[0-9a-fA-F]+", path.read_text(encoding="utf-8")), f"an address in {path.name}"


def test_defaults_lose_their_address(tool):
    assert tool._clean_repr(object()) == "<object object>"
    assert tool._clean_repr(lambda: 0) == "test_defaults_lose_their_address.<locals>.<lambda>"


def _write_package(root: Path, name: str, undocumented: bool) -> None:
    package = root / name
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent(f'''\
        """A package for the API reference's own tests."""

        from {name}.things import LIMIT, Documented, documented{", Undocumented, undocumented" if undocumented else ""}

        __all__ = ["Documented", "documented", "LIMIT"{', "Undocumented", "undocumented"' if undocumented else ""}]
        '''))
    (package / "things.py").write_text(textwrap.dedent('''\
        """Things to document."""

        from __future__ import annotations

        import dataclasses

        # The largest thing.
        LIMIT = 10


        class Documented:
            """A documented class.

            Args:
                size (int): how big.

            Example:
                >>> Documented(2).double()
                4
            """

            def __init__(self, size: int = LIMIT, sentinel: object = object()):
                self.size = size

            def double(self) -> int:
                """Twice :attr:`size`; see :func:`documented`."""
                return 2 * self.size


        def documented(x: "int | None" = None, *, scale: float = 1e-3) -> float:
            """A documented function."""
            return scale


        '''))
    if undocumented:
        with open(package / "things.py", "a") as things:
            things.write(textwrap.dedent('''\


                @dataclasses.dataclass
                class Undocumented:
                    size: int = 1


                def undocumented():
                    pass
                '''))


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """Make importable packages in tmp_path; forget them afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    made = []

    def make(name: str, undocumented: bool) -> str:
        _write_package(tmp_path, name, undocumented)
        made.append(name)
        importlib.invalidate_caches()
        return name

    yield make
    for name in made:
        for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            del sys.modules[module]


def test_missing_docstrings_fail_loudly(tool, fake_package, tmp_path, capsys):
    package = fake_package("apiref_undocumented", undocumented=True)
    with pytest.raises(tool.MissingDocstrings) as error:
        tool.render_pages(package)
    # the dataclass's generated docstring does not count as one
    assert set(error.value.names) == {f"{package}.Undocumented", f"{package}.undocumented",
                                      f"{package}.things.Undocumented", f"{package}.things.undocumented"}
    out = tmp_path / "out"
    assert tool.main(["--package", package, "--out", str(out)]) == 2
    assert "apiref_undocumented.undocumented" in capsys.readouterr().err
    assert not out.exists()


def test_pages_and_check_mode(tool, fake_package, tmp_path, capsys):
    package = fake_package("apiref_documented", undocumented=False)
    out = tmp_path / "out"
    assert tool.main(["--package", package, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", f"{package}.md", f"{package}.things.md"]
    page = (out / f"{package}.md").read_text(encoding="utf-8")
    # signatures as written (no object address), docstring sections, doctests fenced, cross-references linked
    assert "Documented(size: int = LIMIT, sentinel: object = object())" in page
    assert 'documented(x: "int | None" = None, *, scale: float = 1e-3) -> float' in page
    assert "- **`size`** (int): how big." in page
    assert "```python\n>>> Documented(2).double()\n4\n```" in page
    assert "see [`documented`](#documented-1)" in page  # GitHub numbers the second `documented` heading
    assert "LIMIT = 10\n```\n\nThe largest thing." in page
    assert "[source](" in page and f"{package}/things.py)" in page
    assert tool.main(["--package", package, "--out", str(out), "--check"]) == 0
    assert "current" in capsys.readouterr().out

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / f"{package}.md").write_text("edited by hand\n", encoding="utf-8")
    (out / "README.md").unlink()
    (out / "removed.md").write_text(f"{tool.GENERATED_NOTE}\n\na page for a module that is gone\n", encoding="utf-8")
    (out / "notes.md").write_text("not a generated page: left alone\n", encoding="utf-8")
    assert tool.main(["--package", package, "--out", str(out), "--check"]) == 1
    err = capsys.readouterr().err
    assert f"{package}.md (differs)" in err and "README.md (missing)" in err and "removed.md (no longer" in err
    assert REGENERATE in err
    assert (out / f"{package}.md").read_text(encoding="utf-8") == "edited by hand\n"  # --check writes nothing
    assert "notes.md" not in err
    assert tool.main(["--package", package, "--out", str(out)]) == 0
    (out / "notes.md").unlink()  # still there: only pages the tool wrote are removed
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # same bytes again; the stale page removed
