"""The one-way imports between btcloan's packages, as contracts read from the source with `ast`.

Every `import`, `from ... import` (relative ones resolved, inside functions and under
TYPE_CHECKING too) and every `import_module("...")` / `import_string("...")` /
`__import__("...")` with a literal name counts: a function-local import is still a
dependency, and a module found by name is one that mypy cannot follow.

`tests/test_imports.py` runs `check()` on the repository (part of `make test`) and proves on a
throw-away tree that each kind of contract catches a violation; `docs/architecture.md`'s
picture is checked against `CONTRACTS` and the real app-level graph.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# The packages that run in production (web, workers, beat, the CLI).
RUNTIME = ("btcloan", "loans", "chainwatch", "bitcoin", "vaultero")
# Everything of ours, the test and benchmark trees included.
OURS = (*RUNTIME, "tests", "bench", "celeryconfig", "manage")
DYNAMIC_IMPORTERS = ("import_module", "import_string", "__import__")
# Dev tooling inside the project package; production code never imports it.
DEV = "btcloan.dev"
REQUIREMENTS_DEV = Path(__file__).resolve().parents[2] / "requirements-dev.txt"


def dev_only_packages(requirements: Path = REQUIREMENTS_DEV) -> tuple[str, ...]:
    """The import names of what requirements-dev.txt adds to requirements.txt (its `-r` line
    pulls in the runtime): `pytest-django==4.14.0` is `pytest_django`."""
    names = []
    for line in requirements.read_text().splitlines():
        requirement = line.split("#", 1)[0].strip()
        if requirement and not requirement.startswith("-"):
            names.append(re.split(r"[=<>~!\[; ]", requirement, maxsplit=1)[0])
    return tuple(name.lower().replace("-", "_") for name in names)


@dataclass(frozen=True)
class Forbidden:
    """No module under `sources` (minus `except_sources`) imports anything under `forbidden`."""

    name: str
    sources: tuple[str, ...]
    forbidden: tuple[str, ...]
    except_sources: tuple[str, ...] = ()


@dataclass(frozen=True)
class Protected:
    """Only `allowed` (and the module itself) import `module`, among `scope`'s modules."""

    name: str
    module: str
    allowed: tuple[str, ...]
    scope: tuple[str, ...] = RUNTIME


Contract = Forbidden | Protected

CONTRACTS: tuple[Contract, ...] = (
    Forbidden(
        "chainwatch and bitcoin never import loans (loans registers itself as their consumer)",
        sources=("chainwatch", "bitcoin"),
        forbidden=("loans",),
    ),
    Forbidden(
        "vaultero imports nothing of ours (a pure library)",
        sources=("vaultero",),
        forbidden=tuple(p for p in OURS if p != "vaultero"),
    ),
    Forbidden(
        "chainwatch and bitcoin do not import each other",
        sources=("chainwatch",),
        forbidden=("bitcoin",),
    ),
    Forbidden(
        "bitcoin does not import chainwatch",
        sources=("bitcoin",),
        forbidden=("chainwatch",),
    ),
    Forbidden(
        "runtime code never imports tests or bench",
        sources=RUNTIME,
        forbidden=("tests", "bench"),
    ),
    Forbidden(
        "runtime code never imports the dev tooling (btcloan.dev: demo, local nodes, test "
        "contracts)",
        sources=RUNTIME,
        except_sources=(DEV,),
        forbidden=(DEV,),
    ),
    Forbidden(
        "runtime code imports nothing only requirements-dev.txt installs (the image has "
        "requirements.txt alone)",
        sources=RUNTIME,
        except_sources=(DEV,),
        forbidden=dev_only_packages(),
    ),
    Protected(
        "only loans.next_steps imports loans.tasks (no task found by name, no import loop "
        "between the tasks and the services)",
        module="loans.tasks",
        allowed=("loans.next_steps",),
    ),
    Forbidden(
        "the project package imports no app (the apps build on btcloan, not it on them)",
        sources=("btcloan",),
        except_sources=(DEV,),
        forbidden=("loans", "chainwatch", "bitcoin"),
    ),
)


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    imported: str  # dotted module name (or module.attribute for `from m import a`)
    path: Path
    line: int


@dataclass(frozen=True)
class Violation:
    contract: str
    imp: Import

    def __str__(self) -> str:
        i = self.imp
        return f"{i.path}:{i.line}: {i.importer} imports {i.imported} ({self.contract})"


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of a `from <level dots><target> import ...`."""
    if level == 0:
        return target or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join([*base, target] if target else base)


def _dynamic_name(node: ast.Call) -> str | None:
    func = node.func
    called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if called not in DYNAMIC_IMPORTERS or not node.args:
        return None
    first = node.args[0]
    if isinstance(first, ast.Constant) and isinstance(first.value, str):
        return first.value
    return None


def _names(node: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
        base = _resolve(module, is_package, node.level, node.module)
        yield base
        yield from (f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    elif isinstance(node, ast.Call) and (name := _dynamic_name(node)) is not None:
        yield name


def imports_of(root: Path, path: Path) -> Iterator[Import]:
    module = module_name(root, path)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        for name in _names(node, module, is_package):
            yield Import(module, name, path, getattr(node, "lineno", 0))


def python_files(root: Path, packages: tuple[str, ...]) -> Iterator[Path]:
    for package in packages:
        single = root / f"{package}.py"
        if single.is_file():
            yield single
        directory = root / package
        if directory.is_dir():
            yield from sorted(p for p in directory.rglob("*.py") if "migrations" not in p.parts)


def under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _violates(contract: Contract, imp: Import) -> bool:
    if isinstance(contract, Forbidden):
        return (
            under(imp.importer, contract.sources)
            and not under(imp.importer, contract.except_sources)
            and under(imp.imported, contract.forbidden)
        )
    return (
        under(imp.importer, contract.scope)
        and under(imp.imported, (contract.module,))
        and not under(imp.importer, (contract.module, *contract.allowed))
    )


def _scope(contract: Contract) -> tuple[str, ...]:
    return contract.sources if isinstance(contract, Forbidden) else contract.scope


def check(root: Path, contracts: tuple[Contract, ...] = CONTRACTS) -> list[Violation]:
    """Every import in `root` that breaks one of `contracts`."""
    packages = tuple(sorted({p.split(".")[0] for c in contracts for p in _scope(c)}))
    found: dict[tuple[str, Path, int], Violation] = {}
    for path in python_files(root, packages):
        for imp in imports_of(root, path):
            for c in contracts:
                # One report per statement and contract (`from loans import tasks` names both
                # `loans` and `loans.tasks`).
                if _violates(c, imp):
                    found.setdefault((c.name, path, imp.line), Violation(c.name, imp))
    return list(found.values())


def component(module: str) -> str:
    """The box a module is drawn in: its top-level package, or `btcloan.dev`."""
    return DEV if under(module, (DEV,)) else module.split(".")[0]


def app_graph(root: Path, packages: tuple[str, ...] = RUNTIME) -> set[tuple[str, str]]:
    """(importer, imported) pairs between the runtime packages (btcloan.dev on its own)."""
    edges: set[tuple[str, str]] = set()
    for path in python_files(root, packages):
        for imp in imports_of(root, path):
            src, dst = component(imp.importer), component(imp.imported)
            if src != dst and dst.split(".")[0] in packages:
                edges.add((src, dst))
    return edges
