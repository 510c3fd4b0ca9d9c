"""Compile the loan contracts with solc-js (npm `solc`, pinned in package.json) into artifacts.

The standard-JSON input is built here and is the same on every machine (source unit names are
file names, OpenZeppelin comes from node_modules), so the output is deterministic and a test can
recompile and compare with the committed artifacts.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from chainwatch.evm.artifacts import ARTIFACTS_DIR, CONTRACT_NAMES, CONTRACTS_DIR

BASE_DIR = CONTRACTS_DIR.parent.parent
NODE_MODULES = BASE_DIR / "node_modules"
# Rootstock has no PUSH0 (Shanghai) nor later opcodes: paris runs on it and on anvil.
EVM_VERSION = "paris"
OPTIMIZER_RUNS = 200

# Reads standard JSON on stdin, resolves imports from node_modules, prints standard JSON.
_SOLC_RUNNER = """
const fs = require('fs');
const path = require('path');
const solc = require('solc');
const input = fs.readFileSync(0, 'utf8');
function findImports(unit) {
  const file = path.join('node_modules', unit);
  if (!unit.startsWith('@openzeppelin/') || !fs.existsSync(file)) {
    return { error: 'not found: ' + unit };
  }
  return { contents: fs.readFileSync(file, 'utf8') };
}
const output = JSON.parse(solc.compile(input, { import: findImports }));
output.solcVersion = solc.version();
process.stdout.write(JSON.stringify(output));
"""


class CompilationError(RuntimeError):
    """solc-js is missing or rejected the sources."""


def standard_json_input() -> dict[str, Any]:
    sources = {
        f"{name}.sol": {"content": (CONTRACTS_DIR / f"{name}.sol").read_text()}
        for name in CONTRACT_NAMES
    }
    return {
        "language": "Solidity",
        "sources": sources,
        "settings": {
            "optimizer": {"enabled": True, "runs": OPTIMIZER_RUNS},
            "evmVersion": EVM_VERSION,
            "outputSelection": {
                "*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}
            },
        },
    }


def compile_artifacts() -> dict[str, dict[str, Any]]:
    """Compile both contracts; return {contract name: artifact}."""
    node = shutil.which("node")
    if node is None:
        raise CompilationError("node is not on PATH: solc-js needs Node.js")
    if not (NODE_MODULES / "solc").is_dir():
        raise CompilationError(f"solc-js is not installed in {NODE_MODULES}: run `npm ci`")
    request = standard_json_input()
    completed = subprocess.run(
        [node, "-e", _SOLC_RUNNER],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        cwd=BASE_DIR,
        timeout=300,
        check=False,
    )
    if completed.returncode != 0:
        raise CompilationError(f"solc-js failed: {completed.stderr.strip()[-2000:]}")
    output = json.loads(completed.stdout)
    errors = [e for e in output.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise CompilationError("\n".join(e["formattedMessage"] for e in errors))
    artifacts: dict[str, dict[str, Any]] = {}
    for name in CONTRACT_NAMES:
        compiled = output["contracts"][f"{name}.sol"][name]
        artifacts[name] = {
            "contractName": name,
            "sourceName": f"chainwatch/contracts/{name}.sol",
            "abi": compiled["abi"],
            "bytecode": "0x" + compiled["evm"]["bytecode"]["object"],
            "deployedBytecode": "0x" + compiled["evm"]["deployedBytecode"]["object"],
            "compiler": {
                "name": "solc-js",
                "version": output["solcVersion"],
                "settings": request["settings"],
            },
        }
    return artifacts


def artifact_text(artifact: dict[str, Any]) -> str:
    """The committed form: sorted keys, two-space indent, trailing newline."""
    return json.dumps(artifact, indent=2, sort_keys=True) + "\n"


def write_artifacts(output_dir: Path = ARTIFACTS_DIR) -> list[Path]:
    """Compile and write one `<Contract>.json` per contract into output_dir."""
    artifacts = compile_artifacts()
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, artifact in artifacts.items():
        path = output_dir / f"{name}.json"
        path.write_text(artifact_text(artifact))
        written.append(path)
    return written
