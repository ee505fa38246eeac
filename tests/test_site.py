"""The documentation site builds with strict checking, and every public symbol has an anchor
in its API reference with structured (Arguments / Returns / Raises) docstrings."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The packages whose public symbols (``__all__``) the API reference documents.
PACKAGES = [
    "neuralode",
    "neuralode.solvers",
    "neuralode.controllers",
    "neuralode.adjoint",
    "neuralode.models",
    "neuralode.implicit",
    "neuralode.pde",
    "neuralode.sde",
    "neuralode.cde",
    "neuralode.shooting",
    "neuralode.training",
    "neuralode.data",
    "neuralode.viz",
]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml")]
        + ["--site-dir", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def _anchors(site: Path) -> set[str]:
    ids: set[str] = set()
    for page in (site / "api").glob("*.html"):
        ids |= set(re.findall(r'id="(neuralode[\w.]*)"', page.read_text()))
    return ids


def test_site_builds_strict_and_every_public_symbol_has_an_anchor(site: Path) -> None:
    ids = _anchors(site)
    # a symbol exported by a subpackage is documented there; the top-level re-export of it
    # needs no second anchor
    documented = {}
    for package in PACKAGES:
        module = importlib.import_module(package)
        for name in module.__all__:
            documented.setdefault(id(getattr(module, name)), set()).add(f"{package}.{name}")
    missing = [names for names in documented.values() if not any(name in ids for name in names)]
    assert not missing, f"public symbols without an API anchor: {sorted(map(sorted, missing))}"
    assert (site / "index.html").exists() and (site / "tutorials" / "index.html").exists()


# What the API pages render: ``::: path`` blocks, each with the inherited members its options
# list (mkdocs.yml's ``filters: ["!^_"]`` hides underscored names, ``inherited_members`` is off
# unless a page names some, ``merge_init_into_class`` puts ``__init__``'s parameters on the class).
_DIRECTIVE = re.compile(r"^::: ([\w.]+)\n((?:[ \t]+.*\n)*)", re.M)


def _rendered() -> list[tuple[str, list[str]]]:
    found = []
    for page in sorted((ROOT / "docs" / "api").glob("*.md")):
        for match in _DIRECTIVE.finditer(page.read_text()):
            inherited = re.search(r"inherited_members:\s*\[([^\]]*)\]", match.group(2))
            names = [n.strip() for n in inherited.group(1).split(",")] if inherited else []
            found.append((match.group(1), names))
    return found


def _resolve(path: str):
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for part in parts[i:]:
            obj = getattr(obj, part)
        return obj
    raise ImportError(path)


def _sections(doc: str | None) -> dict[str, set[str]]:
    """The sections of a docstring as mkdocstrings parses them: kind -> the names it lists."""
    griffe = pytest.importorskip("griffe")
    found: dict[str, set[str]] = {}
    if not doc:
        return found
    parsed = griffe.Docstring(inspect.cleandoc(doc)).parse("google", warnings=False)
    for section in parsed:
        names = found.setdefault(section.kind.value, set())
        if section.kind.value in ("parameters", "other parameters", "attributes"):
            names |= {item.name.lstrip("*") for item in section.value}
    return found


def _returns_value(func) -> bool:
    """Whether ``func`` returns or yields something: its annotation, else its source."""
    annotation = inspect.signature(func, eval_str=False).return_annotation
    if annotation is not inspect.Signature.empty:
        return annotation not in (None, "None", "NoReturn")
    tree = ast.parse(textwrap.dedent(inspect.getsource(func))).body[0]
    nodes = list(ast.iter_child_nodes(tree))
    while nodes:
        node = nodes.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        if isinstance(node, (ast.Yield, ast.YieldFrom)):
            return True
        if isinstance(node, ast.Return) and node.value is not None:
            if not (isinstance(node.value, ast.Constant) and node.value.value is None):
                return True
        nodes.extend(ast.iter_child_nodes(node))
    return False


def _check_function(name: str, func, skip_first: bool, problems: list[str]) -> None:
    if not func.__doc__:
        problems.append(f"{name}: no docstring")
        return
    found = _sections(func.__doc__)
    params = list(inspect.signature(func).parameters)[1 if skip_first else 0 :]
    named = found.get("parameters", set()) | found.get("other parameters", set())
    if set(params) != named:
        problems.append(f"{name}: Arguments {sorted(named)} != parameters {sorted(params)}")
    if _returns_value(func) and not ({"returns", "yields"} & found.keys()):
        problems.append(f"{name}: returns a value but has no Returns/Yields section")


def _check_class(name: str, cls, inherited: list[str], problems: list[str]) -> None:
    if not cls.__doc__:
        problems.append(f"{name}: no docstring")
    found = _sections(cls.__doc__)
    named = found.get("parameters", set()) | found.get("other parameters", set())
    attributes = found.get("attributes", set())
    if dataclasses.is_dataclass(cls):
        fields = {field.name for field in dataclasses.fields(cls)}
        if not fields <= attributes:
            problems.append(f"{name}: no Attributes for the fields {sorted(fields - attributes)}")
    if getattr(cls.__init__, "__module__", "").startswith("neuralode"):
        params = set(list(inspect.signature(cls.__init__).parameters)[1:])
        if not named <= params or not params <= named | attributes:
            problems.append(f"{name}: Arguments {sorted(named)} != parameters {sorted(params)}")
    members = {key: value for key, value in vars(cls).items() if not key.startswith("_")}
    members |= {key: inspect.getattr_static(cls, key) for key in inherited}
    for key, member in members.items():
        skip_first = True
        if isinstance(member, staticmethod):
            member, skip_first = member.__func__, False
        elif isinstance(member, classmethod):
            member = member.__func__
        elif isinstance(member, property):
            if member.fget.__module__.startswith("neuralode") and not member.__doc__:
                problems.append(f"{name}.{key}: property without a docstring")
            continue
        if inspect.isfunction(member) and member.__module__.startswith("neuralode"):
            _check_function(f"{name}.{key}", member, skip_first, problems)


def _problems() -> list[str]:
    """Every incomplete docstring of what the API pages render, as ``name: what is wrong``."""
    problems: list[str] = []
    for path, inherited in _rendered():
        obj = _resolve(path)
        if inspect.isfunction(obj):
            _check_function(path, obj, False, problems)
        elif inspect.isclass(obj) and obj.__module__.startswith("neuralode"):
            _check_class(path, obj, inherited, problems)
    return problems


def test_public_api_docstrings_are_structured() -> None:
    """Every function, class and public method (defined in the package) of what the API pages
    render documents exactly its parameters (Arguments), says what it returns (Returns or
    Yields), and every dataclass names its fields (Attributes); properties have docstrings."""
    problems = _problems()
    assert not problems, f"{len(problems)} docstrings incomplete:\n" + "\n".join(problems)
