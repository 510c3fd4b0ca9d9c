"""The documentation follows the code: the lifecycle diagrams draw exactly the transition
table, and every module a page of docs/ names exists."""

from __future__ import annotations

import importlib
import re
import subprocess
from pathlib import Path

import pytest

from loans.models import BitcoinStage, LoanStatus
from loans.transitions import TABLES
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
