"""The loan contract's flavour is checked at start-up (the health probe the web container's
health check runs): detected from the bytecode, a pin the chain contradicts is a failure."""

from __future__ import annotations

from typing import Any

import pytest

from btcloan.dev.contracts import DeployedContracts
from chainwatch.client import use_web3
from chainwatch.evm.flavour import forget_flavours
from loans.metrics import contract_flavour_probe

pytestmark = pytest.mark.evm


@pytest.fixture
def pointed(evm_settings: Any, w3: Any) -> Any:
    def at(deployed: DeployedContracts, pinned: str) -> Any:
        evm_settings.LOAN_CONTRACT_ADDRESS = deployed.loan_address
        evm_settings.ETHERSWAP_CONTRACT_ADDRESS = deployed.etherswap_address
        evm_settings.EVM_START_BLOCK = deployed.block_number
        evm_settings.LOAN_CONTRACT_FLAVOUR = pinned
        forget_flavours()
        return contract_flavour_probe()

    use_web3(w3)
    yield at
    use_web3(None)
    forget_flavours()


@pytest.mark.parametrize(
    ("which", "pinned", "ok", "detail"),
    [
        ("ours", "auto", True, "the loan contract is btcloan"),
        ("seed", "auto", True, "the loan contract is seed"),
        ("seed", "seed", True, "the loan contract is seed"),
        ("ours", "seed", False, "LOAN_CONTRACT_FLAVOUR is 'seed' but the deployed loan contract"),
        ("seed", "btcloan", False, "LOAN_CONTRACT_FLAVOUR is 'btcloan'"),
    ],
)
def test_the_probe_detects_and_checks_the_pin(
    pointed, deployed_contracts, seed_contracts, which, pinned, ok, detail
):
    deployed = deployed_contracts if which == "ours" else seed_contracts
    result = pointed(deployed, pinned)
    assert result.ok is ok
    assert detail in result.detail


def test_no_contract_configured_is_not_a_failure(settings, tmp_path):
    settings.LOAN_CONTRACT_ADDRESS = ""
    settings.ETHERSWAP_CONTRACT_ADDRESS = ""
    settings.DEPLOYMENT_FILE = tmp_path / "none.json"
    assert contract_flavour_probe().ok
