"""Write the API reference (docs/api/*.md) from lowbit's docstrings, or check that the checked-in pages are current.

Usage::

    .venv/bin/python tools/api_reference.py            # (re)write docs/api/
    .venv/bin/python tools/api_reference.py --check    # exit 1 and name the stale pages; writes nothing

One page per public subpackage and top-level module of the package (plus every module a page's ``__all__``
exports, such as ``lowbit.functional.calibration``), and an index, docs/api/README.md. A page documents the names in
the module's ``__all__`` (or, without one, the public names the module defines): kind, signature with annotations and
defaults as written in the source, the docstring as Markdown, a link to the source file, and for classes their public
methods and properties.

The output depends only on the source: names are sorted, annotations and defaults are the source text (a default
that has to come from ``repr`` loses any ``at 0x…`` address), and nothing records a time or a machine.

A public class, function or module without a docstring is an error (exit 2, every one named). A public constant
without a comment or docstring in the source is only reported on stderr: Python gives constants no docstring.
Standard library only: ``inspect`` for the objects, ``ast`` for the source text.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import enum
import functools
import importlib
import inspect
import os
import pkgutil
import re
import sys
import textwrap
import time
import tokenize
import types
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DOCS_API = REPO / "docs" / "api"  # links are written relative to here, wherever --out puts the files
PACKAGE = "lowbit"
REGENERATE = ".venv/bin/python tools/api_reference.py"
# Public modules that get no page, and why (the index says so).
EXCLUDED = {"lowbit.cli": "the `lowbit` command line: its reference is `lowbit --help` (and `lowbit COMMAND --help`)"}
GENERATED_NOTE = f"<!-- Generated from the docstrings by tools/api_reference.py; do not edit. Regenerate: {REGENERATE} -->"
SIGNATURE_WIDTH = 100  # longer signatures are written one parameter per line

SECTION_RE = re.compile(
    r"^(Args|Arguments|Parameters|Keyword Args|Keyword Arguments|Other Parameters|Attributes|Raises|Returns|Return|"
    r"Yields|Yield|Example|Examples|Note|Notes|Warning|Warnings|See Also|References|Todo):\s*$"
)
ENTRY_SECTIONS = {"Args", "Arguments", "Parameters", "Keyword Args", "Keyword Arguments", "Other Parameters",
                  "Attributes", "Raises"}
_NAME = r"\*{0,2}[A-Za-z_][\w.]*"
ENTRY_RE = re.compile(
    rf"^(?P<names>{_NAME}(?:\s*[,/]\s*{_NAME})*)(?:\s*\((?P<type>[^()]*(?:\([^()]*\)[^()]*)*)\))?\s*:(?:\s+(?P<desc>.*))?$"
)
ROLE_RE = r":(?:py:)?(?:func|class|meth|mod|attr|data|obj|exc|const|ref):`(?P<role>[^`]+)`"
INLINE_RE = re.compile(rf"``(?P<code>.+?)``|{ROLE_RE}|`(?P<single>[^`]+)`", re.DOTALL)
ADDRESS_RE = re.compile(r"\s+at 0x[0-9a-fA-F]+")


class MissingDocstrings(Exception):
    """Public classes, functions or modules without a docstring: the reference would be silently empty."""

    def __init__(self, names: list[str]):
        self.names = names
        lines = "\n".join(f"  {n}" for n in names)
        super().__init__(f"{len(names)} public name(s) have no docstring; write one for each:\n{lines}")


# ---------------------------------------------------------------------------------------------------------------------
# Source text


@functools.cache
def _parsed(path: str) -> tuple[str, ast.Module]:
    text = Path(path).read_text(encoding="utf-8")
    return text, ast.parse(text)


@functools.cache
def _encoded_lines(path: str) -> list[bytes]:
    return [line.encode("utf-8") for line in _parsed(path)[0].splitlines(keepends=True)]


def _segment(path: str, node: ast.AST) -> str:
    """The node's source text as written; one that spans lines is joined into one (``(\n  1,\n)`` is ``(1)``)."""
    lines = _encoded_lines(path)  # ast column offsets count UTF-8 bytes
    if node.lineno == node.end_lineno:
        return lines[node.lineno - 1][node.col_offset:node.end_col_offset].decode("utf-8")
    pieces = [lines[node.lineno - 1][node.col_offset:].decode("utf-8").rstrip()]
    pieces += [line.decode("utf-8").strip() for line in lines[node.lineno:node.end_lineno - 1]]
    pieces.append(lines[node.end_lineno - 1][:node.end_col_offset].decode("utf-8").strip())
    if any("#" in piece for piece in pieces):  # comments inside: let ast write it
        return ast.unparse(node)
    text = ""
    for piece in filter(None, pieces):
        if piece[0] in ")]}":
            text = text.rstrip(",") + piece
        elif not text or text[-1] in "([{":
            text += piece
        else:
            text += " " + piece
    return text


def _source_file(obj: Any) -> str | None:
    try:
        path = inspect.getsourcefile(obj)
    except (TypeError, OSError):
        return None
    return path if path and os.path.exists(path) else None


def _underlying(obj: Any) -> Any:
    """The Python function behind a wrapper (``functools.wraps``, ``lru_cache``, a numba dispatcher)."""
    try:
        obj = inspect.unwrap(obj)
    except ValueError:
        pass
    py_func = getattr(obj, "py_func", None)
    return py_func if inspect.isfunction(py_func) else obj


def _function_node(func: Any) -> tuple[str, ast.FunctionDef | ast.AsyncFunctionDef] | None:
    func = _underlying(func)
    code = getattr(func, "__code__", None)
    path = _source_file(func)
    if code is None or path is None:
        return None
    _, tree = _parsed(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == func.__name__:
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            if code.co_firstlineno in (node.lineno, first):
                return path, node
    return None


def _class_node(cls: type) -> tuple[str, ast.ClassDef] | None:
    path = _source_file(cls)
    if path is None:
        return None
    _, tree = _parsed(path)
    parts = cls.__qualname__.split(".")
    body: list[ast.stmt] = tree.body
    found = None
    for part in parts:
        found = next((n for n in body if isinstance(n, ast.ClassDef) and n.name == part), None)
        if found is None:
            return None
        body = found.body
    return (path, found) if found is not None else None


def _module_path(module: types.ModuleType) -> str | None:
    path = getattr(module, "__file__", None)
    return path if path and path.endswith(".py") and os.path.exists(path) else None


def _import_source(module_name: str, node: ast.ImportFrom) -> str | None:
    """The absolute module an ``ImportFrom`` in ``module_name`` reads from."""
    if node.level == 0:
        return node.module
    parts = module_name.split(".") if _is_package(module_name) else module_name.split(".")[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def _is_package(module_name: str) -> bool:
    module = sys.modules.get(module_name)
    return module is not None and hasattr(module, "__path__")


@dataclasses.dataclass
class Definition:
    """Where a module-level name is assigned: its file, the assignment, and the comment or docstring about it."""

    module: str
    path: str
    node: ast.stmt
    doc: str


def _definition(module_name: str, name: str, depth: int = 0) -> Definition | None:
    """Follow ``from x import name`` until the module that assigns ``name``."""
    module = sys.modules.get(module_name)
    path = _module_path(module) if module else None
    if path is None or depth > 10:
        return None
    _, tree = _parsed(path)
    body = tree.body
    for index, node in enumerate(body):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return Definition(module_name, path, node, _assignment_doc(path, body, index))
        for target in targets:  # a, b = 1, 2
            if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                for element, value in zip(target.elts, node.value.elts, strict=False):
                    if isinstance(element, ast.Name) and element.id == name:
                        part = ast.Assign(targets=[element], value=value, lineno=node.lineno,
                                          end_lineno=node.end_lineno)
                        return Definition(module_name, path, part, _assignment_doc(path, body, index))
    for node in body:
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    source = _import_source(module_name, node)
                    if source and source in sys.modules:
                        return _definition(source, alias.name, depth + 1)
    return None


@functools.cache
def _comments(path: str) -> dict[int, str]:
    """Line number -> the text of the ``#`` comment on it."""
    found = {}
    with open(path, "rb") as source:
        for token in tokenize.tokenize(source.readline):
            if token.type == tokenize.COMMENT:
                found[token.start[0]] = token.string[1:].strip()
    return found


def _assignment_doc(path: str, body: list[ast.stmt], index: int) -> str:
    """A string literal right after the assignment, else the ``#`` comment lines right above it, else a trailing one."""
    node = body[index]
    following = body[index + 1] if index + 1 < len(body) else None
    if (isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)):
        return inspect.cleandoc(following.value.value)
    comments = _comments(path)
    lines = _parsed(path)[0].splitlines()
    above = []
    row = node.lineno - 1
    while row - 1 >= 0 and row in comments and lines[row - 1].lstrip().startswith("#"):
        above.append(comments[row])
        row -= 1
    if above:
        return "\n".join(reversed(above))
    return comments.get(node.end_lineno, "")


# ---------------------------------------------------------------------------------------------------------------------
# Signatures


@dataclasses.dataclass
class Written:
    """A parameter's annotation and default as the source writes them ("" where it writes none)."""

    annotation: str = ""
    default: str = ""


def _written_args(path: str, node: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[dict[str, Written], str]:
    args = node.args
    written: dict[str, Written] = {}
    positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    for arg, default in zip(positional, defaults, strict=True):
        written[arg.arg] = Written(_segment(path, arg.annotation) if arg.annotation else "",
                                   _segment(path, default) if default is not None else "")
    for arg, default in zip(args.kwonlyargs, args.kw_defaults, strict=True):
        written[arg.arg] = Written(_segment(path, arg.annotation) if arg.annotation else "",
                                   _segment(path, default) if default is not None else "")
    for arg in (args.vararg, args.kwarg):
        if arg is not None:
            written[arg.arg] = Written(_segment(path, arg.annotation) if arg.annotation else "")
    returns = _segment(path, node.returns) if node.returns else ""
    return written, returns


def _field_default(path: str, value: ast.expr) -> str:
    """``field(default=x)`` is ``x``; ``field(default_factory=f)`` is ``f()``."""
    if isinstance(value, ast.Call) and _segment(path, value.func) in ("field", "dataclasses.field"):
        for keyword in value.keywords:
            if keyword.arg == "default":
                return _segment(path, keyword.value)
            if keyword.arg == "default_factory":
                factory = keyword.value
                if isinstance(factory, ast.Lambda) and not factory.args.args:
                    return _segment(path, factory.body)
                return f"{_segment(path, factory)}()"
        return ""
    return _segment(path, value)


def _class_fields(cls: type) -> dict[str, Written]:
    """Annotated class-body names (dataclass and NamedTuple fields) over the MRO, nearest class first."""
    written: dict[str, Written] = {}
    package = cls.__module__.split(".")[0]
    for klass in cls.__mro__:
        found = _class_node(klass) if klass.__module__.split(".")[0] == package else None
        if found is None:
            continue
        path, node = found
        for statement in node.body:
            if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                name = statement.target.id
                if name not in written:
                    default = _field_default(path, statement.value) if statement.value is not None else ""
                    written[name] = Written(_segment(path, statement.annotation), default)
    return written


def _clean_repr(value: Any) -> str:
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    if inspect.isclass(value) or inspect.isroutine(value):
        return getattr(value, "__qualname__", getattr(value, "__name__", repr(value)))
    if isinstance(value, types.ModuleType):
        return value.__name__
    return ADDRESS_RE.sub("", repr(value))


def _format_annotation(annotation: Any) -> str:
    if isinstance(annotation, str):
        return annotation
    if inspect.isclass(annotation) and not isinstance(annotation, types.GenericAlias):
        if annotation.__module__ == "builtins":
            return annotation.__qualname__
        return f"{annotation.__module__}.{annotation.__qualname__}"
    return ADDRESS_RE.sub("", inspect.formatannotation(annotation).replace("NoneType", "None"))


def _format_signature(name: str, signature: inspect.Signature, written: dict[str, Written], returns: str | None,
                      drop_first: bool = False) -> str:
    parameters = list(signature.parameters.values())
    if drop_first and parameters and parameters[0].kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                           inspect.Parameter.POSITIONAL_OR_KEYWORD):
        parameters = parameters[1:]
    parts: list[str] = []
    seen_keyword_only = False
    for index, parameter in enumerate(parameters):
        kind = parameter.kind
        source = written.get(parameter.name, Written())
        annotation = source.annotation
        if not annotation and parameter.annotation is not inspect.Parameter.empty:
            annotation = _format_annotation(parameter.annotation)
        default = ""
        if parameter.default is not inspect.Parameter.empty:
            default = source.default or _clean_repr(parameter.default)
        text = parameter.name
        if kind is inspect.Parameter.VAR_POSITIONAL:
            text, seen_keyword_only = "*" + text, True
        elif kind is inspect.Parameter.VAR_KEYWORD:
            text = "**" + text
        elif kind is inspect.Parameter.KEYWORD_ONLY and not seen_keyword_only:
            parts.append("*")
            seen_keyword_only = True
        if annotation:
            text += f": {annotation}"
        if default:
            text += f" = {default}" if annotation else f"={default}"
        parts.append(text)
        following = parameters[index + 1] if index + 1 < len(parameters) else None
        if kind is inspect.Parameter.POSITIONAL_ONLY and (following is None
                                                         or following.kind is not inspect.Parameter.POSITIONAL_ONLY):
            parts.append("/")
    if returns == "" and signature.return_annotation is not inspect.Signature.empty:
        returns = _format_annotation(signature.return_annotation)
    tail = f" -> {returns}" if returns else ""
    one_line = f"{name}({', '.join(parts)}){tail}"
    if len(one_line) <= SIGNATURE_WIDTH or not parts:
        return one_line
    body = "".join(f"    {part},\n" for part in parts)
    return f"{name}(\n{body}){tail}"


def function_signature(name: str, func: Any, drop_first: bool = False) -> str | None:
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    found = _function_node(func)
    written, returns = _written_args(*found) if found else ({}, "")
    return _format_signature(name, signature, written, returns, drop_first)


def class_signature(name: str, cls: type) -> str | None:
    if issubclass(cls, enum.Enum):
        return None
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        return None
    written = dict(_class_fields(cls))
    for method in ("__init__", "__new__"):
        owner = next((k for k in cls.__mro__ if method in vars(k)), None)
        if owner is None or owner is object:
            continue
        function = vars(owner)[method]
        function = getattr(function, "__func__", function)
        found = _function_node(function) if inspect.isfunction(_underlying(function)) else None
        if found:
            arguments, _ = _written_args(*found)
            if set(signature.parameters) <= set(arguments):
                written = arguments | {k: v for k, v in written.items() if k not in arguments}
                break
    return _format_signature(name, signature, written, None)  # a class's call returns the instance: no "-> None"


# ---------------------------------------------------------------------------------------------------------------------
# Docstrings as Markdown


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (``-`` and ``_`` kept), spaces to ``-``."""
    text = heading.strip().lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in " -_")
    return text.replace(" ", "-")


def _code_span(text: str) -> str:
    text = " ".join(text.split("\n"))
    if "`" not in text:
        return f"`{text}`"
    fence = "``" if "``" not in text else "```"
    return f"{fence} {text} {fence}"


def _escape_prose(text: str) -> str:
    # "<name" would open an HTML tag in Markdown
    return re.sub(r"<(?=[A-Za-z/!?])", "&lt;", text)


class Renderer:
    """Docstring → Markdown for one page; ``resolve`` turns a cross-reference into a link target (or None)."""

    def __init__(self, resolve: Callable[[str], str | None]):
        self.resolve = resolve

    def inline(self, text: str) -> str:
        out: list[str] = []
        position = 0
        for match in INLINE_RE.finditer(text):
            out.append(_escape_prose(text[position:match.start()]))
            position = match.end()
            if match.group("code") is not None:
                out.append(_code_span(match.group("code")))
            elif match.group("role") is not None:
                target = match.group("role").strip()
                shown = target
                if target.startswith("~"):
                    target = target[1:]
                    shown = target.rsplit(".", 1)[-1]
                explicit = re.match(r"^(.*?)\s*<([^>]+)>$", target)  # :func:`text <target>`
                if explicit:
                    shown, target = explicit.group(1), explicit.group(2)
                link = self.resolve(target.rstrip("()"))
                out.append(f"[{_code_span(shown)}]({link})" if link else _code_span(shown))
            else:
                out.append(_code_span(match.group("single")))
        out.append(_escape_prose(text[position:]))
        return "".join(out)

    def render(self, doc: str) -> str:
        """A whole docstring (already ``inspect.cleandoc``-ed) as Markdown blocks."""
        return "\n\n".join(self._blocks(doc.splitlines()))

    def _blocks(self, lines: list[str]) -> list[str]:
        blocks: list[str] = []
        i, n = 0, len(lines)
        literal_next = False
        while i < n:
            line = lines[i]
            indent = len(line) - len(line.lstrip())
            if not line.strip():
                i += 1
                continue
            if indent == 0 and line.startswith(">>>"):
                j = i
                while j < n and lines[j].strip():
                    j += 1
                code = "\n".join(lines[i:j])
                if blocks and blocks[-1].startswith("```python\n>>>"):
                    blocks[-1] = blocks[-1][: -len("\n```")] + "\n\n" + code + "\n```"
                else:
                    blocks.append(f"```python\n{code}\n```")
                i = j
                continue
            if indent == 0 and SECTION_RE.match(line):
                title = SECTION_RE.match(line).group(1)
                j = i + 1
                while j < n and (not lines[j].strip() or lines[j].startswith((" ", "\t"))):
                    j += 1
                body = textwrap.dedent("\n".join(lines[i + 1:j])).strip("\n").splitlines()
                blocks.append(f"**{title}:**")
                blocks.extend(self._section(title, body))
                i = j
                continue
            if indent > 0:
                j = i
                while j < n and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > 0):
                    j += 1
                code = textwrap.dedent("\n".join(lines[i:j])).strip("\n")
                language = "python" if literal_next or code.startswith(">>>") else "text"
                blocks.append(f"```{language}\n{code}\n```")
                literal_next = False
                i = j
                continue
            j = i
            while j < n and lines[j].strip() and not (j > i and (lines[j].startswith(">>>")
                                                                 or SECTION_RE.match(lines[j]))):
                j += 1
            paragraph = "\n".join(lines[i:j])
            literal_next = paragraph.rstrip().endswith("::")
            if literal_next:
                paragraph = paragraph.rstrip()[:-2].rstrip()
                paragraph = paragraph + ":" if paragraph else ""
            if paragraph:
                blocks.append(self.inline(paragraph))
            i = j
        return blocks

    def _section(self, title: str, body: list[str]) -> list[str]:
        if title not in ENTRY_SECTIONS:
            return self._blocks(body)
        entries: list[tuple[str, str | None, list[str]]] = []
        for line in body:
            match = ENTRY_RE.match(line) if not line.startswith((" ", "\t")) else None
            if match:
                entries.append((match.group("names"), match.group("type"), [match.group("desc") or ""]))
            elif entries:
                entries[-1][2].append(line.strip())
            else:
                return self._blocks(body)  # not a list of entries: prose
        items = []
        for names, kind, description in entries:
            shown = ", ".join(f"**{_code_span(name.strip())}**" for name in re.split(r"[,/]", names))
            if kind:
                shown += f" ({self.inline(kind)})"
            paragraphs = "\n".join(description).strip().split("\n\n")
            text = "\n\n  ".join(self.inline(" ".join(p.split())) for p in paragraphs if p.strip())
            items.append(f"- {shown}: {text}" if text else f"- {shown}")
        return ["\n".join(items)]


ABBREVIATIONS = ("e.g.", "i.e.", "eq.", "eqs.", "al.", "cf.", "vs.", "etc.", "fig.", "no.", "approx.")


def first_sentence(text: str) -> str:
    """Up to the first full stop that ends a sentence: not an abbreviation, not inside brackets or a code span."""
    depth, ticks = 0, 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(depth - 1, 0)
        elif ch == "`":
            ticks += 1
        elif (ch in ".!?" and i + 1 < len(text) and text[i + 1] == " " and depth == 0 and ticks % 2 == 0
              and i >= 20 and not text[: i + 1].lower().endswith(ABBREVIATIONS)):
            return text[: i + 1]
    return text


def summary(doc: str, renderer: Renderer) -> str:
    """The docstring's first sentence (of its first paragraph), one line, for tables."""
    first = doc.strip().split("\n\n")[0]
    if first.startswith(">>>"):
        return ""
    text = first_sentence(" ".join(first.split()))
    return renderer.inline(text).replace("|", "\\|")


# ---------------------------------------------------------------------------------------------------------------------
# What each page documents


@dataclasses.dataclass
class Entry:
    """One public name of a page's module."""

    name: str
    obj: Any
    kind: str  # "module", "class", "function", "constant"
    label: str  # what the page calls it: "dataclass (frozen)", "function", "constant (int)", ...
    doc: str
    source: str | None  # absolute path of the defining file
    definition: Definition | None = None


def _own_doc(obj: Any) -> str:
    """The docstring written in the source (a dataclass's or NamedTuple's generated one does not count)."""
    if inspect.isclass(obj):
        found = _class_node(obj)
        if found is not None:
            return inspect.cleandoc(ast.get_docstring(found[1], clean=False) or "")
        doc = vars(obj).get("__doc__")
        return inspect.cleandoc(doc) if isinstance(doc, str) else ""
    doc = getattr(_underlying(obj), "__doc__", None) or getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc) if isinstance(doc, str) else ""


def _class_label(cls: type) -> str:
    if issubclass(cls, enum.Enum):
        return "enum"
    if issubclass(cls, BaseException):
        return "exception"
    if dataclasses.is_dataclass(cls):
        return "dataclass (frozen)" if cls.__dataclass_params__.frozen else "dataclass"
    if issubclass(cls, tuple) and hasattr(cls, "_fields"):
        return "named tuple"
    return "class"


def public_names(module: types.ModuleType) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is not None:
        return list(names)
    defined = []
    for name, value in vars(module).items():
        if name.startswith("_"):
            continue
        if (inspect.isclass(value) or inspect.isroutine(value)) and getattr(value, "__module__", None) == module.__name__:
            defined.append(name)
        elif not (inspect.isclass(value) or inspect.isroutine(value) or isinstance(value, types.ModuleType)):
            found = _definition(module.__name__, name)
            if found is not None and found.module == module.__name__:
                defined.append(name)
    return defined


def entries_of(module: types.ModuleType) -> list[Entry]:
    entries = []
    for name in public_names(module):
        if not hasattr(module, name):
            raise AttributeError(f"{module.__name__}.__all__ names {name!r}, which the module does not have")
        obj = getattr(module, name)
        if isinstance(obj, types.ModuleType):
            entries.append(Entry(name, obj, "module", "module", _own_doc(obj), _module_path(obj)))
        elif inspect.isclass(obj) and not isinstance(obj, types.GenericAlias):
            entries.append(Entry(name, obj, "class", _class_label(obj), _own_doc(obj), _source_file(obj)))
        elif callable(obj) and not isinstance(obj, types.GenericAlias | types.UnionType):
            entries.append(Entry(name, obj, "function", "function", _own_doc(obj), _source_file(_underlying(obj))))
        else:
            definition = _definition(module.__name__, name)
            alias = isinstance(obj, types.UnionType | types.GenericAlias) or type(obj).__module__ == "typing"
            label = "type alias" if alias else f"constant ({type(obj).__name__})"
            entries.append(Entry(name, obj, "constant", label, definition.doc if definition else "",
                                 definition.path if definition else None, definition))
    order = {"module": 0, "class": 1, "function": 2, "constant": 3}
    return sorted(entries, key=lambda e: (order[e.kind], e.name.lower(), e.name))


def _is_public_module(name: str) -> bool:
    return not any(part.startswith("_") for part in name.split("."))


def page_modules(package: str) -> list[str]:
    """The package, its public subpackages, its public top-level modules, and every module an ``__all__`` exports."""
    root = importlib.import_module(package)
    names = {package}
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        depth = info.name.count(".")
        if _is_public_module(info.name) and (info.ispkg or depth == 1):
            names.add(info.name)
    names -= set(EXCLUDED)
    todo = sorted(names)
    while todo:
        module = importlib.import_module(todo.pop())
        for name in public_names(module):
            value = getattr(module, name, None)
            if (isinstance(value, types.ModuleType) and value.__name__.startswith(package + ".")
                    and _is_public_module(value.__name__) and value.__name__ not in names | set(EXCLUDED)):
                names.add(value.__name__)
                todo.append(value.__name__)
    return sorted(names)


def missing_docstrings(modules: Iterable[str]) -> tuple[list[str], list[str]]:
    """(classes/functions/modules without a docstring, constants without a comment), as dotted names."""
    errors, constants = set(), set()
    for module_name in modules:
        module = importlib.import_module(module_name)
        if not _own_doc(module):
            errors.add(module_name)
        for entry in entries_of(module):
            if entry.doc.strip():
                continue
            where = f"{module_name}.{entry.name}"
            (constants if entry.kind == "constant" else errors).add(where)
    return sorted(errors), sorted(constants)


# ---------------------------------------------------------------------------------------------------------------------
# Pages


def _link_path(path: str | None) -> str | None:
    if path is None:
        return None
    return Path(os.path.relpath(path, DOCS_API)).as_posix()


def _repo_path(path: str) -> str:
    try:
        return Path(path).resolve().relative_to(REPO).as_posix()
    except ValueError:
        return Path(path).name


class Reference:
    """All pages of one package: which names each documents under which anchor, and the rendering."""

    def __init__(self, package: str):
        self.package = package
        self.modules = page_modules(package)
        self.entries = {m: entries_of(importlib.import_module(m)) for m in self.modules}
        # id(object) -> (page, name) of the entry that documents it: the shortest page, under the object's own name
        self.owner: dict[int, tuple[str, str]] = {}
        by_depth = sorted(self.modules, key=lambda m: (m.count("."), m))
        for own_name_only in (True, False):
            for module in by_depth:
                for entry in self.entries[module]:
                    if entry.kind != "constant" and (_own_name(entry) or not own_name_only):
                        self.owner.setdefault(id(entry.obj), (module, entry.name))
        self._member_cache: dict[int, list[tuple[str, str, Any]]] = {}
        self.anchors = {module: self._plan(module) for module in self.modules}  # page -> name or Class.member -> anchor
        self.home: dict[int, tuple[str, str]] = {}  # id(object or member) -> (page, anchor)
        for module in by_depth:
            for entry in self.entries[module]:
                if entry.kind == "constant" or self.owner.get(id(entry.obj)) != (module, entry.name):
                    continue
                self.home[id(entry.obj)] = (module, self.anchors[module][entry.name])
                if entry.kind == "class":
                    for member, _, raw in self.members(entry.obj):
                        anchor = (module, self.anchors[module][f"{entry.name}.{member}"])
                        self.home.setdefault(id(raw), anchor)
                        self.home.setdefault(id(getattr(raw, "__func__", raw)), anchor)

    # -- which members a class page shows

    def members(self, cls: type) -> list[tuple[str, str, Any]]:
        """The public methods and properties documented under ``cls``: its own, and those of private (undocumented)
        base classes of the package it does not override; a documented base's members are linked, not repeated."""
        key = id(cls)
        if key not in self._member_cache:
            found: dict[str, tuple[str, str, Any]] = {}
            shadowed: set[str] = set()
            for klass in cls.__mro__:
                in_package = klass.__module__.split(".")[0] == self.package
                if klass is cls or (in_package and id(klass) not in self.owner):
                    for name, kind, raw in _members(klass):
                        if name not in found and name not in shadowed:
                            found[name] = (name, kind, raw)
                elif in_package:
                    shadowed |= {name for name, *_ in self.members(klass)}
            self._member_cache[key] = sorted(found.values(), key=lambda m: (m[0].lower(), m[0]))
        return self._member_cache[key]

    def is_alias(self, module: str, entry: Entry) -> bool:
        """Another name on the same page documents this object (``BinaryDense = BinaryLinear``)."""
        owner = self.owner.get(id(entry.obj))
        return entry.kind in ("class", "function") and owner is not None and owner[0] == module and owner[1] != entry.name

    # -- anchors

    def _plan(self, module: str) -> dict[str, str]:
        """Anchors in the order the page writes its headings (GitHub numbers repeats: x, x-1, ...)."""
        seen: dict[str, int] = {}

        def anchor(heading: str) -> str:
            base = slug(heading)
            count = seen.get(base, 0)
            seen[base] = count + 1
            return base if count == 0 else f"{base}-{count}"

        anchors: dict[str, str] = {}
        anchor(module)
        for title in self._section_titles(module):
            anchor(title)
            for entry in self.entries[module]:
                if _SECTION_OF[entry.kind] != title:
                    continue
                anchors[entry.name] = anchor(entry.name)
                if entry.kind == "class" and not self.is_alias(module, entry):
                    for member, *_ in self.members(entry.obj):
                        anchors[f"{entry.name}.{member}"] = anchor(f"{entry.name}.{member}")
        return anchors

    def _section_titles(self, module: str) -> list[str]:
        titles = ["Contents"] if self.entries[module] else []
        if self._submodules(module):
            titles.append("Submodules")
        present = {_SECTION_OF[e.kind] for e in self.entries[module]}
        return titles + [t for t in ("Modules", "Classes", "Functions", "Constants") if t in present]

    # -- cross-references

    def renderer(self, page: str, *contexts: str) -> Renderer:
        """A renderer for a docstring written in ``contexts`` (its module, then its class), shown on ``page``.

        Relative names resolve in the innermost context first, then on the page's module, then on the package."""

        def link(module: str, anchor: str | None = None) -> str:
            target = "" if module == page else f"{module}.md"
            return f"{target}#{anchor}" if anchor else (target or f"#{slug(page)}")

        def resolve(target: str) -> str | None:
            candidates = [target] if target == self.package or target.startswith(self.package + ".") else []
            for context in (*reversed(contexts), page, self.package):
                candidates.append(f"{context}.{target}")
            for dotted in candidates:
                if dotted in self.anchors:
                    return link(dotted)
                obj = _lookup(dotted)
                if obj is None:
                    continue
                here = next((e.name for e in self.entries.get(page, ()) if e.obj is obj and e.kind != "constant"), None)
                if here is not None:  # documented on this very page: stay on it
                    return link(page, self.anchors[page][here])
                if id(obj) in self.home:
                    return link(*self.home[id(obj)])
                module, _, name = dotted.rpartition(".")
                if module in self.anchors and name in self.anchors[module]:
                    return link(module, self.anchors[module][name])
                if isinstance(obj, types.ModuleType) and _module_path(obj):
                    return _link_path(_module_path(obj))
            return None

        return Renderer(resolve)

    # -- pages

    @functools.cache  # noqa: B019 (one Reference per run)
    def _submodules(self, module: str) -> list[tuple[str, str | None, str]]:
        """(name, path, docstring) of the public modules directly inside a package, read from the source."""
        obj = importlib.import_module(module)
        if not hasattr(obj, "__path__"):
            return []
        found = []
        for info in pkgutil.iter_modules(obj.__path__, module + "."):
            if not _is_public_module(info.name) or info.name in EXCLUDED:
                continue
            spec = importlib.util.find_spec(info.name)
            path = spec.origin if spec and spec.origin and spec.origin.endswith(".py") else None
            doc = ast.get_docstring(_parsed(path)[1]) if path else None
            found.append((info.name, path, inspect.cleandoc(doc or "")))
        return sorted(found)

    def page(self, module_name: str) -> str:
        module = importlib.import_module(module_name)
        anchors = self.anchors[module_name]
        out = [GENERATED_NOTE, f"# `{module_name}`"]
        if _own_doc(module):
            out.append(self.renderer(module_name, module_name).render(_own_doc(module)))
        path = _module_path(module)
        if path:
            out.append(f"Source: [`{_repo_path(path)}`]({_link_path(path)})")
        entries = self.entries[module_name]
        if entries:
            rows = ["| Name | Kind | Summary |", "| --- | --- | --- |"]
            for entry in entries:
                text = summary(entry.doc, self.renderer(module_name, *_contexts(entry)))
                if self.is_alias(module_name, entry):
                    original = self.owner[id(entry.obj)][1]
                    text = f"Alias of [`{original}`](#{anchors[original]})."
                rows.append(f"| [`{entry.name}`](#{anchors[entry.name]}) | {entry.label} | {text} |")
            out += ["## Contents", "\n".join(rows)]
        submodules = self._submodules(module_name)
        if submodules:
            items = []
            for name, sub_path, doc in submodules:
                documented = name in self.anchors
                target = f"{name}.md" if documented else _link_path(sub_path)
                line = f"- [`{name}`]({target})" if target else f"- `{name}`"
                if not documented:
                    line += " (source)"
                text = summary(doc, self.renderer(module_name, name))
                items.append(f"{line}: {text}" if text else line)
            out += ["## Submodules", "\n".join(items)]
        for title in self._section_titles(module_name):
            if title in ("Contents", "Submodules"):
                continue
            out.append(f"## {title}")
            for entry in entries:
                if _SECTION_OF[entry.kind] == title:
                    out.append(self._entry(module_name, entry))
        return _tidy("\n\n".join(out))

    def _entry(self, module_name: str, entry: Entry) -> str:
        renderer = self.renderer(module_name, *_contexts(entry))
        parts = [f"### `{entry.name}`"]
        where = [f"*{entry.label}*"]
        defined_in = getattr(entry.obj, "__module__", None) if entry.kind in ("class", "function") else None
        if entry.kind == "constant" and entry.definition is not None:
            defined_in = entry.definition.module
        if entry.kind == "module":
            defined_in = entry.obj.__name__
            if entry.obj.__name__ in self.anchors:
                where.append(f"[`{entry.obj.__name__}`]({entry.obj.__name__}.md)")
        elif defined_in and defined_in != module_name:
            where.append(f"from `{defined_in}`")
        if entry.source:
            where.append(f"[source]({_link_path(entry.source)})")
        parts.append(" · ".join(where))
        if self.is_alias(module_name, entry):
            original = self.owner[id(entry.obj)][1]
            parts.append(f"Alias of [`{original}`](#{self.anchors[module_name][original]}): the same "
                         f"{entry.kind}, under a second name.")
            return "\n\n".join(parts)
        code = None
        if entry.kind == "function":
            code = function_signature(entry.name, entry.obj)
        elif entry.kind == "class":
            code = class_signature(entry.name, entry.obj)
        elif entry.kind == "constant":
            code = _constant_code(entry)
        if code:
            parts.append(f"```python\n{code}\n```")
        if entry.kind == "class":
            bases = self._bases(entry.obj, module_name)
            if bases:
                parts.append(f"Bases: {bases}")
        if entry.kind == "module":
            text = summary(entry.doc, renderer) if entry.obj.__name__ in self.anchors else ""
            if text:
                parts.append(text)
            elif entry.doc:
                parts.append(renderer.render(entry.doc))
        elif entry.doc:
            parts.append(renderer.render(entry.doc))
        if entry.kind == "class":
            parts += self._class_body(module_name, entry)
        return "\n\n".join(parts)

    def _bases(self, cls: type, page: str) -> str:
        found = _class_node(cls)
        if found is not None:
            path, node = found
            written = [_segment(path, b) for b in node.bases]
            if len(written) == len(cls.__bases__):
                pairs = [(w, b) for w, b in zip(written, cls.__bases__, strict=True) if b is not object]
            else:
                pairs = [(w, None) for w in written]
        else:
            pairs = [(_format_annotation(b), b) for b in cls.__bases__ if b is not object]
        shown = []
        for text, base in pairs:
            home = self.home.get(id(base)) if base is not None else None
            if home:
                module, anchor = home
                shown.append(f"[`{text}`]({'' if module == page else module + '.md'}#{anchor})")
            else:
                shown.append(f"`{text}`")
        return ", ".join(shown)

    def _class_body(self, module_name: str, entry: Entry) -> list[str]:
        cls = entry.obj
        parts: list[str] = []
        if issubclass(cls, enum.Enum):
            rows = "\n".join(f"- `{member.name}` = `{_clean_repr(member.value)}`" for member in cls)
            parts.append(f"**Members:**\n\n{rows}")
        for member, kind, raw in self.members(cls):
            block = [f"#### `{entry.name}.{member}`"]
            if kind == "property":
                getter = raw.fget if isinstance(raw, property) else raw.func
                found = _function_node(getter)
                returns = _written_args(*found)[1] if found else ""
                label = "*property* (settable)" if isinstance(raw, property) and raw.fset else "*property*"
                block.append(f"{label} · `{returns}`" if returns else label)
                function = getter
            else:
                function = raw.__func__ if isinstance(raw, staticmethod | classmethod) else raw
                block.append(f"*{kind}*")
                signature = function_signature(member, function, drop_first=kind != "static method")
                if signature:
                    block.append(f"```python\n{signature}\n```")
            doc = _own_doc(function)
            if doc:
                owner = _underlying(function)
                context = [getattr(owner, "__module__", module_name) or module_name]
                context.append(f"{context[0]}.{owner.__qualname__.rpartition('.')[0]}")
                block.append(self.renderer(module_name, *context).render(doc))
            parts.append("\n\n".join(block))
        inherited = self._inherited(cls, module_name)
        if inherited:
            parts.append(inherited)
        return parts

    def _inherited(self, cls: type, page: str) -> str:
        """Members ``cls`` takes unchanged from documented classes of the package, as links to them."""
        listed = {name for name, *_ in self.members(cls)}
        lines = []
        for base in cls.__mro__[1:]:
            if id(base) not in self.owner or base.__module__.split(".")[0] != self.package:
                continue
            module, base_name = self.owner[id(base)]
            names = [name for name, *_ in self.members(base) if name not in listed]
            listed |= set(names)
            if not names:
                continue
            prefix = "" if module == page else f"{module}.md"
            anchors = self.anchors[module]
            links = ", ".join(f"[`{n}`]({prefix}#{anchors[f'{base_name}.{n}']})" for n in names)
            lines.append(f"Inherited from [`{base_name}`]({prefix}#{anchors[base_name]}): {links}")
        return "\n\n".join(lines)

    def index(self) -> str:
        out = [GENERATED_NOTE, f"# `{self.package}` API reference",
               f"Generated from the docstrings by `tools/api_reference.py`: one page per public subpackage and "
               f"top-level module, and per module an `__all__` exports. Regenerate with `{REGENERATE}`; "
               f"`make test` fails while these pages are stale. The examples run as doctests of the modules "
               f"themselves (`pytest src/{self.package}`), not from these pages."]
        rows = ["| Page | Names | Summary |", "| --- | --- | --- |"]
        for module in self.modules:
            doc = _own_doc(importlib.import_module(module))
            text = summary(doc, self.renderer("README", module))  # "README": no module page, links name their page
            rows.append(f"| [`{module}`]({module}.md) | {len(self.entries[module])} | {text} |")
        out.append("\n".join(rows))
        excluded = [f"- `{name}`: {why}." for name, why in sorted(EXCLUDED.items()) if name.startswith(self.package)]
        if excluded:
            out += ["Not documented here:", "\n".join(excluded)]
        return _tidy("\n\n".join(out))

    def render(self) -> dict[str, str]:
        pages = {f"{module}.md": self.page(module) for module in self.modules}
        pages["README.md"] = self.index()
        return dict(sorted(pages.items()))


def _own_name(entry: Entry) -> bool:
    name = getattr(entry.obj, "__name__", None)
    return name is not None and name.rpartition(".")[2] == entry.name


def _contexts(entry: Entry) -> tuple[str, ...]:
    """Where names in an entry's docstring are looked up: its defining module, then (a class) the class itself."""
    if entry.kind == "module":
        return (entry.obj.__name__,)
    if entry.kind == "constant":
        return (entry.definition.module,) if entry.definition else ()
    module = getattr(entry.obj, "__module__", None)
    if not module:
        return ()
    if entry.kind == "class":
        return module, f"{module}.{entry.obj.__qualname__}"
    return (module,)


_SECTION_OF = {"module": "Modules", "class": "Classes", "function": "Functions", "constant": "Constants"}


def _members(cls: type) -> list[tuple[str, str, Any]]:
    """Public methods and properties a class defines itself: (name, kind, raw attribute), sorted by name."""
    members = []
    for name, raw in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(raw, property | functools.cached_property):
            members.append((name, "property", raw))
        elif isinstance(raw, staticmethod):
            members.append((name, "static method", raw))
        elif isinstance(raw, classmethod):
            members.append((name, "class method", raw))
        elif inspect.isfunction(_underlying(raw)):
            members.append((name, "method", raw))
    return sorted(members, key=lambda m: (m[0].lower(), m[0]))


def _lookup(dotted: str) -> Any:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module = sys.modules.get(".".join(parts[:cut]))
        if module is None:
            continue
        obj: Any = module
        for attribute in parts[cut:]:
            obj = getattr(obj, attribute, None)
            if obj is None:
                return None
        return obj
    return None


CONSTANT_LINES = 12  # a longer assignment shows its dict's keys, or "..."


def _constant_code(entry: Entry) -> str:
    """The assignment as written (a dict's keys only, or ``...``, where it is long)."""
    definition = entry.definition
    if definition is None:
        value = _clean_repr(entry.obj)
        return f"{entry.name} = {value}" if len(value) <= 100 else f"{entry.name}: {type(entry.obj).__name__}"
    node, path = definition.node, definition.path
    annotation = f": {_segment(path, node.annotation)}" if isinstance(node, ast.AnnAssign) else ""
    value = node.value
    if value is None:
        return f"{entry.name}{annotation}"
    if getattr(node, "col_offset", None) is None:  # one name of ``a, b = 1, 2``: a node made up without a column
        text = _segment(path, value)
        return f"{entry.name}{annotation} = {text}" if len(text) <= 100 else f"{entry.name}{annotation} = ..."
    if node.end_lineno - node.lineno < CONSTANT_LINES and node.col_offset == 0:  # the whole statement
        lines = _encoded_lines(path)[node.lineno - 1:node.end_lineno]
        lines[-1] = lines[-1][:node.end_col_offset]  # not a trailing comment
        return b"".join(lines).decode("utf-8").rstrip()
    if isinstance(value, ast.Dict) and None not in value.keys:
        keys = "".join(f"    {_segment(path, key)}: ...,\n" for key in value.keys)
        return f"{entry.name}{annotation} = {{\n{keys}}}"
    return f"{entry.name}{annotation or ': ' + type(entry.obj).__name__} = ..."


def _tidy(text: str) -> str:
    lines = [line.rstrip() for line in text.splitlines()]
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n") + "\n"


# ---------------------------------------------------------------------------------------------------------------------
# Command line


def render_pages(package: str = PACKAGE) -> dict[str, str]:
    """Every page's file name and text; raises :class:`MissingDocstrings` first if a public name has no docstring."""
    modules = page_modules(package)
    errors, constants = missing_docstrings(modules)
    if errors:
        raise MissingDocstrings(errors)
    if constants:
        print(f"api_reference: {len(constants)} public constant(s) have no comment or docstring in the source:\n"
              + "\n".join(f"  {name}" for name in constants), file=sys.stderr)
    return Reference(package).render()


def stale_pages(pages: dict[str, str], out: Path) -> list[str]:
    """What differs between ``pages`` and the Markdown files in ``out``: changed, missing and extra files."""
    stale = []
    for name, text in pages.items():
        path = out / name
        if not path.exists():
            stale.append(f"{name} (missing)")
        elif path.read_bytes() != text.encode("utf-8"):
            stale.append(f"{name} (differs)")
    stale += [f"{path.name} (no longer generated)" for path in _leftovers(pages, out)]
    return stale


def _leftovers(pages: dict[str, str], out: Path) -> list[Path]:
    """Pages this tool wrote earlier (they start with its note) that it no longer writes; other files are not ours."""
    if not out.is_dir():
        return []
    note = GENERATED_NOTE.encode("utf-8")
    return [path for path in sorted(out.glob("*.md")) if path.name not in pages and path.read_bytes().startswith(note)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 and list the pages that differ from what would be generated")
    parser.add_argument("--out", type=Path, default=DOCS_API, help="the folder of pages (default: docs/api)")
    parser.add_argument("--package", default=PACKAGE, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        pages = render_pages(args.package)
    except MissingDocstrings as error:
        print(f"api_reference: {error}", file=sys.stderr)
        return 2
    out: Path = args.out
    if args.check:
        stale = stale_pages(pages, out)
        if stale:
            print(f"api_reference: {len(stale)} page(s) in {out} are stale:", file=sys.stderr)
            print("\n".join(f"  {line}" for line in stale), file=sys.stderr)
            print(f"Regenerate them with: {REGENERATE}", file=sys.stderr)
            return 1
        print(f"api_reference: {len(pages)} pages in {out} are current ({time.perf_counter() - start:.1f} s)")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    for path in _leftovers(pages, out):
        path.unlink()
    changed = 0
    for name, text in pages.items():
        path = out / name
        data = text.encode("utf-8")
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)
            changed += 1
    print(f"api_reference: wrote {len(pages)} pages to {out} ({changed} changed, {time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
