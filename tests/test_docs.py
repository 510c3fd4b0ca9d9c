"""The documentation follows the code: the lifecycle diagrams draw exactly the transition
table, and every module a page of docs/ names exists."""

from __future__ import annotations

import importlib
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from loans.models import BitcoinStage, LoanStatus
from loans.next_steps import NextStep
from loans.transitions import TABLES
from tests.support import handoffs
from tests.support.imports import CONTRACTS, DEV, Forbidden, app_graph, under

DOCS = Path(__file__).resolve().parent.parent / "docs"
EDGE = re.compile(r"^\s*(\[\*\]|\w+)\s*-->\s*(\[\*\]|\w+)\b")
# The pages that cite modules by path (the older app pages predate this check).
CITING_PAGES = (
    "architecture.md",
    "dapp.md",
    "lifecycle.md",
    "operations.md",
    "runbook.md",
    "security.md",
    "scaling.md",
)


def diagram_edges(field: str) -> set[tuple[str, str]]:
    """The `a --> b` edges of the Mermaid block of docs/lifecycle.md headed `%% <field>:`."""
    text = (DOCS / "lifecycle.md").read_text()
    blocks = re.findall(r"```mermaid\n(.*?)```", text, flags=re.S)
    (block,) = [b for b in blocks if re.search(rf"^\s*%% {field}:", b, flags=re.M)]
    edges = set()
    for line in block.splitlines():
        match = EDGE.match(line)
        if match:
            edges.add((match.group(1), match.group(2)))
    return edges


def table_edges(field: str) -> set[tuple[str, str]]:
    table = TABLES[field]  # type: ignore[index]
    return {(str(source), str(target)) for target, sources in table.items() for source in sources}


@pytest.mark.parametrize("field", ["status", "bitcoin_stage"])
def test_lifecycle_diagram_draws_exactly_the_transition_table(field: str) -> None:
    drawn = {(a, b) for a, b in diagram_edges(field) if "[*]" not in (a, b)}
    table = table_edges(field)
    assert drawn - table == set(), "drawn in docs/lifecycle.md but not in loans/transitions.py"
    assert table - drawn == set(), "in loans/transitions.py but not drawn in docs/lifecycle.md"


@pytest.mark.parametrize(
    ("field", "choices"), [("status", LoanStatus), ("bitcoin_stage", BitcoinStage)]
)
def test_lifecycle_diagram_names_only_real_states(field: str, choices: type) -> None:
    named = {state for edge in diagram_edges(field) for state in edge} - {"[*]"}
    assert named <= set(choices.values)  # type: ignore[attr-defined]
    assert set(choices.values) <= named, "a state is missing from the diagram"  # type: ignore[attr-defined]


@pytest.mark.parametrize("page", CITING_PAGES)
def test_cited_modules_exist(page: str) -> None:
    text = (DOCS / page).read_text()
    root = DOCS.parent
    cited = set(
        re.findall(
            r"`((?:loans|chainwatch|bitcoin|btcloan|vaultero|bench|tests|docs)/[\w/.]+\.(?:py|md|sol))`",
            text,
        )
    )
    cited |= {"celeryconfig.py"} if "`celeryconfig.py`" in text else set()
    missing = sorted(path for path in cited if not (root / path).exists())
    assert missing == [], f"{page} cites files that do not exist"


def _resolves(dotted: str) -> bool:
    """A module, an attribute of one, or a Django model label (`loans.Loan`)."""
    from django.apps import apps

    parts = dotted.split(".")
    if len(parts) == 2:
        try:
            apps.get_model(dotted)
            return True
        except LookupError:
            pass
    for cut in range(len(parts), 0, -1):
        try:
            target: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(target, name):
                return False
            target = getattr(target, name)
        return True
    return False


@pytest.mark.parametrize("page", CITING_PAGES)
def test_cited_python_names_exist(page: str) -> None:
    """`loans.services.intake._judge` and the like name a real module, attribute or model
    (Celery task names such as `loans.watchdog` are checked against the registered tasks)."""
    from btcloan.celery import app

    for module in ("btcloan.tasks", "chainwatch.tasks", "bitcoin.tasks", "loans.tasks"):
        importlib.import_module(module)
    tasks = set(app.tasks)
    text = (DOCS / page).read_text()
    cited = set(re.findall(r"`((?:loans|chainwatch|bitcoin|btcloan|vaultero)(?:\.\w+)+)`", text))
    missing = sorted(name for name in cited if name not in tasks and not _resolves(name))
    assert missing == [], f"{page} names what the code does not have"


# --- the one-way imports picture of docs/architecture.md -------------------------------------
IMPORT_NODE = re.compile(r'^\s*(\w+)\["([\w.]+)[^"]*"\]\s*$')
IMPORT_EDGE = re.compile(r"^\s*(\w+)\s*(-->|-\. never \.-x)\s*(\w+)\s*$")


def import_picture() -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(solid "imports" arrows, crossed "never" arrows) of the block headed `%% imports:`,
    with node ids replaced by the package each node names."""
    text = (DOCS / "architecture.md").read_text()
    blocks = re.findall(r"```mermaid\n(.*?)```", text, flags=re.S)
    (block,) = [b for b in blocks if re.search(r"^\s*%% imports:", b, flags=re.M)]
    names: dict[str, str] = {}
    solid: set[tuple[str, str]] = set()
    crossed: set[tuple[str, str]] = set()
    for line in block.splitlines():
        if node := IMPORT_NODE.match(line):
            names[node.group(1)] = node.group(2)
        elif edge := IMPORT_EDGE.match(line):
            pair = (
                names.get(edge.group(1), edge.group(1)),
                names.get(edge.group(3), edge.group(3)),
            )
            (solid if edge.group(2) == "-->" else crossed).add(pair)
        else:
            assert line.strip() in ("", "flowchart BT", "%% imports:"), line
    return solid, crossed


def forbidden_by_contract(src: str, dst: str) -> bool:
    """Whether some contract forbids any module of `src` to import `dst`."""
    return any(
        isinstance(c, Forbidden)
        and under(src, c.sources)
        and not under(src, c.except_sources)
        and under(dst, c.forbidden)
        for c in CONTRACTS
    )


def test_the_import_picture_draws_exactly_the_imports_between_the_packages() -> None:
    solid, _ = import_picture()
    assert solid == app_graph(DOCS.parent)


def test_the_import_pictures_crossed_arrows_are_the_contracts() -> None:
    solid, crossed = import_picture()
    assert crossed, "the picture draws the contracts"
    for src, dst in crossed:
        assert forbidden_by_contract(src, dst), f"{src} -x {dst} is not an import contract"
    for src, dst in solid:
        assert not forbidden_by_contract(src, dst), f"{src} --> {dst} breaks a contract"
    # The issue's own rules are drawn: the watchers never import loans; runtime never the dev
    # package.
    assert {("chainwatch", "loans"), ("bitcoin", "loans"), ("loans", DEV)} <= crossed


def _tracked_text_files(root: Path) -> list[Path]:
    """The repository's files as git tracks them (untracked scratch is not the repository)."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=False)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: cannot tell tracked files apart")
    paths = [root / name for name in listed.stdout.decode().split("\0") if name]
    texts = []
    for path in paths:
        if not path.is_file():
            continue
        head = path.read_bytes()[:8192]
        if b"\0" not in head:  # binary files (PNG, compiled artifacts) cannot link anywhere
            texts.append(path)
    return texts


def test_nothing_in_the_repository_points_outside_it() -> None:
    """Docs stand alone: no path to the shared folder beside the repository, which a clone does
    not have (the protocol is docs/protocol.md)."""
    root = DOCS.parent
    files = _tracked_text_files(root)
    assert len(files) > 100  # really the whole tree
    outside = "../" + "shared"  # spelt apart so this file does not match itself
    found = [
        f"{path.relative_to(root)}:{number}"
        for path in files
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if outside in line
    ]
    assert not found, found


# --- the hand-offs picture of docs/architecture.md -------------------------------------------
HANDOFF_STEP = re.compile(r'^\s*(\w+)\["(\w+): ([\w.]+)"\]\s*$')
HANDOFF_SOURCE = re.compile(r'^\s*(\w+)\(\["[^"]*"\]\)\s*$')
HANDOFF_READ = re.compile(r'^\s*(chainwatch|bitcoin) -- "([^"]+)" --> (\w+)\s*$')
HANDOFF_NEXT = re.compile(r"^\s*(\w+) --> (\w+)\s*$")


def handoff_picture() -> dict[str, Any]:
    text = (DOCS / "architecture.md").read_text()
    blocks = re.findall(r"```mermaid\n(.*?)```", text, flags=re.S)
    (block,) = [b for b in blocks if re.search(r"^\s*%% handoffs:", b, flags=re.M)]
    picture: dict[str, Any] = {"tasks": {}, "reads": {}, "edges": set()}
    for line in block.splitlines():
        if step := HANDOFF_STEP.match(line):
            assert step.group(1) == step.group(2), line
            picture["tasks"][step.group(1)] = step.group(3)
        elif read := HANDOFF_READ.match(line):
            for kind in read.group(2).split(", "):
                assert (read.group(1), kind) not in picture["reads"], f"{kind} drawn twice"
                picture["reads"][(read.group(1), kind)] = read.group(3)
        elif edge := HANDOFF_NEXT.match(line):
            picture["edges"].add((edge.group(1), edge.group(2)))
        else:
            assert HANDOFF_SOURCE.match(line) or line.strip() in (
                "",
                "flowchart LR",
                "%% handoffs:",
            ), line
    return picture


def test_the_handoff_picture_draws_who_reads_each_fact_and_event() -> None:
    reads = handoff_picture()["reads"]
    expected = {("bitcoin", kind): name for kind, name in handoffs.fact_readers().items()}
    expected |= {("chainwatch", event): name for event, name in handoffs.event_readers().items()}
    assert reads == expected


def test_the_handoff_picture_draws_each_next_step_and_its_task() -> None:
    picture = handoff_picture()
    tasks = {step.name: task.name for step, task in handoffs.step_tasks().items()}
    assert picture["tasks"] == tasks
    assert set(tasks) == {step.name for step in NextStep}
    expected = {
        (handler, step.name)
        for handler, steps in handoffs.handler_steps().items()
        for step in steps
    }
    expected |= {
        (step.name, later.name) for step, steps in handoffs.task_steps().items() for later in steps
    }
    assert picture["edges"] == expected


def test_the_handoff_modules_admit_no_explicit_any() -> None:
    """The modules the hand-offs cross are under mypy's disallow_any_explicit (pyproject)."""
    config = tomllib.loads((DOCS.parent / "pyproject.toml").read_text())
    strict = {
        module
        for override in config["tool"]["mypy"]["overrides"]
        if override.get("disallow_any_explicit")
        for module in override["module"]
    }
    assert {
        "bitcoin.facts",
        "chainwatch.events",
        "chainwatch.indexer.consumer",
        "loans.handlers",
        "loans.next_steps",
    } <= strict
