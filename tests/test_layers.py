"""The architecture as a rule: which packages may import which and where heavy libraries live
(mypy, the type check, runs in ``make lint``).

Every ``import`` statement in ``clipkit/`` is read (those inside functions and ``TYPE_CHECKING``
blocks too: a lazy upward import is still an upward dependency). A package may import its own
modules and the packages in the layers below its own, never a sibling in its layer or one above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "clipkit"

# Top to bottom: the front ends, the reports of the services' results, search (which embeds
# a folder first: `search --in DIR`), the other services, then what they share.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli",),
    ("serve",),
    ("quickstart",),
    ("report",),
    ("search",),
    ("audit", "embed", "train", "zeroshot"),
    ("index", "plots"),
    ("engine",),
    ("inputs",),
    ("models",),
    ("store",),
    ("score",),
    ("infra",),
    ("config", "errors"),
)
LAYER_OF = {package: depth for depth, names in enumerate(LAYERS) for package in names}

# A heavy library is imported by one package (or one module) only, so that the light commands
# stay light and a reader knows where each one is used.
HEAVY_HOMES = {
    "ray": "engine/cluster.py",
    "typer": "cli",
    "rich": "cli",
    "open_clip": "models/openclip",
    "onnxruntime": "models/onnx_encoder.py",
    "faiss": "index",
    "pyarrow": "store",
    "matplotlib": "plots.py",
    "fastapi": "serve/app.py",
    "starlette": "serve/app.py",
    "pydantic": "serve/app.py",
    "prometheus_client": "serve/app.py",
    "uvicorn": "serve/server.py",
}


def _modules() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def _package(path: Path) -> str:
    """``cli`` for clipkit/cli/x.py, ``config`` for clipkit/config.py, ``""`` for the root."""
    parts = path.relative_to(ROOT).parts
    return parts[0] if len(parts) > 1 else parts[0].removesuffix(".py").strip("_")


def _imported(path: Path) -> list[tuple[int, str]]:
    """``(line, dotted name)`` for every import in ``path``; ``from clipkit import x`` names
    ``clipkit.x`` (a subpackage or module) unless ``x`` is a plain attribute of the root."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.level:  # relative: resolve against the importing module's package
                base = path.relative_to(ROOT.parent).with_suffix("").parts[: -node.level]
                module = ".".join((*base, node.module))
            else:
                module = node.module
            if module == "clipkit":
                found += [(node.lineno, f"clipkit.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, module))
    return found


def _clipkit_package(dotted: str) -> str | None:
    parts = dotted.split(".")
    if parts[0] != "clipkit" or len(parts) == 1:
        return None
    return parts[1]


def test_every_package_has_a_layer():
    packages = {_package(path) for path in _modules()} - {"", "init", "main"}
    assert packages <= set(LAYER_OF), f"no layer for {sorted(packages - set(LAYER_OF))}"


def upward_imports() -> list[str]:
    """Each import that points sideways or up, as ``file:line imports module``."""
    wrong = []
    for path in _modules():
        importer = _package(path)
        if importer not in LAYER_OF:  # clipkit/__init__.py and __main__.py sit above all
            continue
        for line, dotted in _imported(path):
            target = _clipkit_package(dotted)
            if target is None or target == "__version__" or target == importer:
                continue
            if LAYER_OF.get(target, -1) <= LAYER_OF[importer]:
                wrong.append(f"{path.relative_to(ROOT.parent)}:{line} imports {dotted}")
    return wrong


def test_imports_point_downward():
    assert upward_imports() == []


def test_the_rule_catches_an_upward_import(tmp_path, monkeypatch):
    """The check itself can fail: a store module that imports a service is reported."""
    fake = tmp_path / "clipkit"
    (fake / "store").mkdir(parents=True)
    (fake / "store" / "bad.py").write_text("def f():\n    from clipkit.embed.run import embed\n")
    (fake / "store" / "fine.py").write_text("from clipkit.infra.atomic import atomic_path\n")
    monkeypatch.setattr(f"{__name__}.ROOT", fake)
    assert upward_imports() == ["clipkit/store/bad.py:2 imports clipkit.embed.run"]


@pytest.mark.parametrize("library", sorted(HEAVY_HOMES))
def test_a_heavy_library_has_one_home(library):
    home = HEAVY_HOMES[library]
    importers = set()
    for path in _modules():
        if any(name.split(".")[0] == library for _, name in _imported(path)):
            importers.add(str(path.relative_to(ROOT)))
    assert importers, f"nothing imports {library}: update HEAVY_HOMES"
    strays = sorted(name for name in importers if not (name == home or name.startswith(home + "/")))
    assert strays == [], f"{library} belongs in clipkit/{home}"


def test_tests_share_helpers_not_each_other():
    """Test modules import shared code from tests/helpers.py (or fixtures), never from
    another test module."""
    tests = Path(__file__).resolve().parent
    wrong = [
        f"{path.name}:{line}"
        for path in sorted(tests.glob("*.py"))
        for line, name in _imported(path)
        if name.startswith("tests.test_")
    ]
    assert wrong == []


def _module_file(dotted: str) -> Path | None:
    """The file of module ``clipkit.a.b``: ``a/b.py`` or ``a/b/__init__.py``; None if neither."""
    parts = dotted.split(".")[1:]
    for candidate in (
        ROOT.joinpath(*parts).with_suffix(".py"),
        ROOT.joinpath(*parts, "__init__.py"),
    ):
        if parts and candidate.is_file():
            return candidate
    return None


def import_cycles() -> list[list[str]]:
    """Each circle of modules that import one another (imports inside functions included:
    a lazy import that closes a circle still ties the two modules together), as module paths.
    ``from package import name`` counts as importing the module ``package.name`` where there
    is one; a package's ``__init__`` counts as the package."""
    edges: dict[Path, set[Path]] = {}
    for path in _modules():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [f"{node.module}.{alias.name}" for alias in node.names]
                names = [n if _module_file(n) else node.module for n in names]
            targets |= {_module_file(n) for n in names if n.startswith("clipkit.")} - {None}
        edges[path] = targets - {path}
    cycles, done, stack = [], set(), []

    def visit(path: Path) -> None:
        if path in stack:
            cycles.append([str(p.relative_to(ROOT)) for p in stack[stack.index(path) :]])
            return
        if path in done:
            return
        stack.append(path)
        for target in sorted(edges.get(path, ())):
            visit(target)
        stack.pop()
        done.add(path)

    for path in sorted(edges):
        visit(path)
    return cycles


def test_no_module_imports_itself_through_others():
    assert import_cycles() == []


def test_the_cycle_check_sees_a_circle(tmp_path, monkeypatch):
    """The check itself can fail: two modules that import each other are reported."""
    fake = tmp_path / "clipkit" / "cli"
    fake.mkdir(parents=True)
    (fake / "app.py").write_text("from clipkit.cli.settings import Command\n")
    (fake / "settings.py").write_text("def f():\n    from clipkit.cli.app import stderr\n")
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path / "clipkit")
    assert import_cycles() == [["cli/app.py", "cli/settings.py"]]
