"""The one-way imports hold (tests/support/imports.py has the contracts), and the checker
catches each kind of violation on a throw-away tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.imports import CONTRACTS, Forbidden, Protected, check, dev_only_packages

ROOT = Path(__file__).resolve().parent.parent


def test_the_repository_keeps_every_import_contract() -> None:
    violations = check(ROOT)
    assert not violations, "\n".join(map(str, violations))


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("source", "line"),
    [
        ("import loans.models\n", 1),
        ("from loans import tasks\n", 1),
        # A function-local import is a dependency all the same.
        ("def f():\n    from loans.services.origination import x\n    return x\n", 2),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import loans\n", 3),
        # Found by name: mypy cannot follow it, the checker does.
        ("from importlib import import_module\nm = import_module('loans.tasks')\n", 2),
    ],
    ids=["import", "from-import", "function-local", "type-checking", "by-name"],
)
def test_a_forbidden_import_is_caught(tmp_path: Path, source: str, line: int) -> None:
    root = _tree(tmp_path, {"chainwatch/__init__.py": "", "chainwatch/sub/mod.py": source})
    (watchers_never_import_loans,) = [c for c in CONTRACTS if "never import loans" in c.name]
    violations = check(root, (watchers_never_import_loans,))
    assert [(v.imp.importer, v.imp.line) for v in violations] == [("chainwatch.sub.mod", line)]


def test_a_relative_import_is_resolved(tmp_path: Path) -> None:
    contract = Forbidden("no b from a", sources=("pkg.a",), forbidden=("pkg.b",))
    root = _tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a/__init__.py": "from ..b import thing\n",
            "pkg/a/mod.py": "from . import sibling\nfrom .. import b\n",
            "pkg/b.py": "",
        },
    )
    found = sorted((v.imp.importer, v.imp.imported) for v in check(root, (contract,)))
    assert found == [("pkg.a", "pkg.b"), ("pkg.a.mod", "pkg.b")]


def test_vaultero_importing_anything_of_ours_is_caught(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "vaultero/__init__.py": "",
            "vaultero/x.py": "import hashlib\nfrom btcloan import locks\n",
        },
    )
    assert [(v.imp.imported, v.imp.line) for v in check(root)] == [("btcloan", 2)]


def test_a_protected_module_is_imported_only_by_its_allowed_importers(tmp_path: Path) -> None:
    contract = Protected(
        "only next_steps imports loans.tasks", "loans.tasks", ("loans.next_steps",)
    )
    root = _tree(
        tmp_path,
        {
            "loans/__init__.py": "",
            "loans/tasks.py": "from loans import services\n",
            "loans/next_steps.py": "from loans import tasks\n",
            "loans/services.py": "def f():\n    from loans.tasks import intake\n",
            "loans/watchdog.py": "import loans.tasks as t\n",
        },
    )
    found = sorted(v.imp.importer for v in check(root, (contract,)))
    assert found == ["loans.services", "loans.watchdog"]


def test_runtime_code_importing_the_dev_tooling_is_caught(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "btcloan/__init__.py": "",
            "btcloan/health.py": "def probe():\n    from btcloan.dev.localnodes import json_rpc\n",
            "btcloan/dev/__init__.py": "",
            "btcloan/dev/demo.py": "from btcloan.dev import localnodes\nimport chainwatch\n",
            "loans/__init__.py": "from btcloan.dev import stack\n",
        },
    )
    found = sorted((v.imp.importer, v.imp.line) for v in check(root))
    assert found == [("btcloan.health", 2), ("loans", 1)]


def test_runtime_code_importing_a_test_tool_is_caught(tmp_path: Path) -> None:
    """The image installs requirements.txt alone: a runtime module importing what only
    requirements-dev.txt brings would fail there at import, not in `make test`."""
    assert {"pytest", "pytest_django", "hypothesis", "schemathesis", "mypy"} <= set(
        dev_only_packages()
    )
    assert "django" not in dev_only_packages()  # the runtime's, pulled in by `-r`
    root = _tree(
        tmp_path,
        {
            "loans/__init__.py": "",
            "loans/services.py": "from hypothesis import given\n",
            "bitcoin/rpc.py": "def f():\n    import pytest_django\n",
            "btcloan/dev/demo.py": "import pytest\n",
            "tests/test_x.py": "import pytest\n",
        },
    )
    found = sorted((v.imp.importer, v.imp.line) for v in check(root))
    assert found == [("bitcoin.rpc", 2), ("loans.services", 1)]


def test_only_the_next_steps_module_imports_loans_tasks(tmp_path: Path) -> None:
    """The repository's own contract: a service, the watchdog or another app reaching for a
    task (however it imports it) is caught; loans.next_steps is not."""
    root = _tree(
        tmp_path,
        {
            "loans/__init__.py": "",
            "loans/tasks.py": "from loans.services import origination\n",
            "loans/next_steps.py": "def go():\n    from loans import tasks\n",
            "loans/services/__init__.py": "",
            "loans/services/origination.py": "def f():\n    from loans.tasks import intake\n",
            "loans/services/watchdog.py": (
                "from django.utils.module_loading import import_string\n"
                "task = import_string('loans.tasks.sweep_collateral')\n"
            ),
            "bitcoin/__init__.py": "",
            "bitcoin/services.py": "from loans import tasks\n",
        },
    )
    found = sorted((v.imp.importer, v.imp.line) for v in check(root) if "loans.tasks" in v.contract)
    assert found == [
        ("bitcoin.services", 1),
        ("loans.services.origination", 2),
        ("loans.services.watchdog", 2),
    ]
