"""Deploying: the function, the management command, and where the service finds the result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from web3 import Web3

from btcloan.dev.contracts import TEST_LENDER_BTC_PUBKEY, TEST_TIMELOCKS
from btcloan.dev.localnodes import ANVIL_DEFAULT_KEYS
from chainwatch.evm.deploy import (
    Deployment,
    DeploymentError,
    TimelockParameters,
    configured_deployment,
    deploy_contracts,
    read_deployment,
    record_deployment,
)
from chainwatch.evm.errors import ChainIdMismatch, InvalidInput, NodeRejected

LENDER = Web3.to_checksum_address("0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266")  # anvil key 0
SAMPLE = Deployment(
    chain_id=31337,
    loan_address=Web3.to_checksum_address("0x5FbDB2315678afecb367f032d93F642f64180aa3"),
    etherswap_address=Web3.to_checksum_address("0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"),
    block_number=7,
    lender_address=LENDER,
)


def _state(w3: Web3) -> tuple[int, int]:
    return int(w3.eth.block_number), int(w3.eth.get_transaction_count(LENDER))


# --- TimelockParameters (pure) ---------------------------------------------------------


def test_seed_defaults() -> None:
    assert TimelockParameters().as_tuple() == (540_000, 1_000, 2_000, 1_500, 543_000)
    TimelockParameters().check_bitcoin_locks(20)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ((0, 5, 10, 5, 50), "positive"),
        ((40, -1, 10, 5, 50), "positive"),
        ((40, 5, 5, 5, 50), "t_0"),
        ((40, 5, 10, 5, 45), "t_1"),
        ((40, 5, 10, 5, True), "integers"),
    ],
)
def test_timelock_validation(values: tuple[Any, ...], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        TimelockParameters(*values)


def test_bitcoin_lock_bounds() -> None:
    with pytest.raises(InvalidInput, match="t_1"):
        TimelockParameters(1_400_000, 1_000, 2_000, 1_500, 1_401_501).check_bitcoin_locks(20)
    with pytest.raises(InvalidInput, match="t_0 = 10 EVM blocks is 0 Bitcoin blocks"):
        TEST_TIMELOCKS.check_bitcoin_locks(20)


# --- the deployment record -------------------------------------------------------------


def test_record_and_read_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "deployment.json"
    assert read_deployment(path) is None
    record_deployment(path, SAMPLE)
    assert read_deployment(path) == SAMPLE
    path.write_text("{not json")
    with pytest.raises(InvalidInput, match="not valid JSON"):
        read_deployment(path)
    path.write_text(json.dumps({"chain_id": 1}))
    with pytest.raises(InvalidInput, match="not a deployment record"):
        read_deployment(path)


def test_configured_deployment_env_wins_over_file(settings: Any, tmp_path: Path) -> None:
    settings.DEPLOYMENT_FILE = tmp_path / "deployment.json"
    settings.LOAN_CONTRACT_ADDRESS = ""
    settings.ETHERSWAP_CONTRACT_ADDRESS = ""
    settings.EVM_CHAIN_ID = 31337
    assert configured_deployment() is None
    record_deployment(settings.DEPLOYMENT_FILE, SAMPLE)
    assert configured_deployment() == SAMPLE
    settings.EVM_CHAIN_ID = 31
    with pytest.raises(InvalidInput, match="records chain 31337, but EVM_CHAIN_ID is 31"):
        configured_deployment()
    settings.EVM_CHAIN_ID = 31337
    # The environment names the same contracts: the file's block and lender still apply.
    settings.LOAN_CONTRACT_ADDRESS = SAMPLE.loan_address.lower()
    settings.ETHERSWAP_CONTRACT_ADDRESS = SAMPLE.etherswap_address
    assert configured_deployment() == SAMPLE
    # Other contracts: the environment wins, indexing starts at EVM_START_BLOCK.
    other = "0x" + "12" * 20
    settings.LOAN_CONTRACT_ADDRESS = other
    settings.EVM_START_BLOCK = 123
    assert configured_deployment() == Deployment(
        chain_id=31337,
        loan_address=Web3.to_checksum_address(other),
        etherswap_address=SAMPLE.etherswap_address,
        block_number=123,
        lender_address=None,
    )
    settings.ETHERSWAP_CONTRACT_ADDRESS = ""
    with pytest.raises(InvalidInput, match="both"):
        configured_deployment()
    settings.ETHERSWAP_CONTRACT_ADDRESS = "0x123"
    with pytest.raises(InvalidInput, match="not an address"):
        configured_deployment()


# --- deploy_contracts --------------------------------------------------------------------


@pytest.mark.evm
def test_deploy_contracts_links_both(w3: Web3) -> None:
    deployment = deploy_contracts(
        w3=w3,
        lender_private_key=ANVIL_DEFAULT_KEYS[0],
        lender_btc_pubkey=TEST_LENDER_BTC_PUBKEY.upper(),
        parameters=TEST_TIMELOCKS,
        expected_chain_id=31337,
    )
    assert deployment.lender_address == LENDER
    assert deployment.chain_id == 31337
    # The recorded block is the loan contract's first: indexing from it misses nothing.
    assert w3.eth.get_code(deployment.loan_address, deployment.block_number) != b""
    assert w3.eth.get_code(deployment.loan_address, deployment.block_number - 1) == b""
    from chainwatch.evm.driver import LoanContracts

    contracts = LoanContracts.from_deployment(w3, deployment)
    assert contracts.loan.functions.etherSwap().call() == deployment.etherswap_address
    assert contracts.etherswap.functions.loanContract().call() == deployment.loan_address
    assert contracts.loan.functions.owner().call() == LENDER
    assert contracts.loan.functions.lenderBtcPubkey().call() == TEST_LENDER_BTC_PUBKEY
    assert contracts.timelock_parameters() == TEST_TIMELOCKS


@pytest.mark.evm
@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"expected_chain_id": 30}, ChainIdMismatch, "serves chain id 31337, expected 30"),
        ({"lender_private_key": ""}, InvalidInput, "private key"),
        ({"lender_private_key": "0x" + "g" * 64}, InvalidInput, "private key"),
        ({"lender_btc_pubkey": "02" + "ab" * 32}, InvalidInput, "64 hex"),
        # a funded-nowhere key: refused before the first transaction, not half-way
        ({"lender_private_key": "0x" + "42" * 32}, NodeRejected, "deploying needs about"),
    ],
)
def test_deploy_contracts_refuses_before_sending(
    w3: Web3, changes: dict[str, Any], error: type[Exception], message: str
) -> None:
    before = _state(w3)
    arguments: dict[str, Any] = {
        "w3": w3,
        "lender_private_key": ANVIL_DEFAULT_KEYS[0],
        "lender_btc_pubkey": TEST_LENDER_BTC_PUBKEY,
        "parameters": TEST_TIMELOCKS,
        "expected_chain_id": 31337,
        **changes,
    }
    with pytest.raises(error, match=message):
        deploy_contracts(**arguments)
    assert _state(w3) == before


@pytest.mark.evm
def test_a_failed_link_names_the_stranded_contract(
    w3: Web3, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If EtherSwap cannot be linked the error says which loan contract is unusable."""
    from chainwatch.evm import deploy
    from chainwatch.evm.artifacts import ETHERSWAP_CONTRACT, load_artifact

    def codeless_etherswap(name: str) -> dict[str, Any]:
        artifact = load_artifact(name)
        if name == ETHERSWAP_CONTRACT:
            artifact["bytecode"] = "0x00"  # init code that stops: a contract with no code
        return artifact

    monkeypatch.setattr(deploy, "load_artifact", codeless_etherswap)
    with pytest.raises(
        DeploymentError, match=r"was deployed at 0x[0-9a-fA-F]{40} but linking"
    ) as caught:
        deploy_contracts(
            w3=w3,
            lender_private_key=ANVIL_DEFAULT_KEYS[0],
            lender_btc_pubkey=TEST_LENDER_BTC_PUBKEY,
            parameters=TEST_TIMELOCKS,
            expected_chain_id=31337,
        )
    assert "EtherSwap address has no code" in str(caught.value)


# --- the command ---------------------------------------------------------------------------


COMMAND_TIMELOCKS = {
    "loan_duration": 400,
    "t_borrower": 50,
    "t_btc_escrow": 100,
    "t_lender": 50,
    "t_btc_collateral": 500,
}


@pytest.mark.evm
def test_deploy_command_records_the_deployment(w3: Web3, evm_settings: Any, tmp_path: Path) -> None:
    output = tmp_path / "deployment.json"
    evm_settings.LENDER_EVM_PRIVATE_KEY = ANVIL_DEFAULT_KEYS[0]
    evm_settings.LENDER_BTC_PRIVATE_KEY = "01".rjust(64, "0")  # its x-only key is G.x
    evm_settings.LOAN_CONTRACT_ADDRESS = ""
    evm_settings.ETHERSWAP_CONTRACT_ADDRESS = ""
    evm_settings.DEPLOYMENT_FILE = output
    call_command("deploy_contracts", **COMMAND_TIMELOCKS)
    deployment = read_deployment(output)
    assert deployment is not None
    assert configured_deployment() == deployment
    assert w3.eth.get_code(deployment.loan_address) != b""
    from chainwatch.evm.driver import LoanContracts

    contracts = LoanContracts.from_deployment(w3, deployment)
    assert contracts.loan.functions.lenderBtcPubkey().call() == TEST_LENDER_BTC_PUBKEY
    assert contracts.timelock_parameters().as_tuple() == (400, 50, 100, 50, 500)


@pytest.mark.evm
@pytest.mark.parametrize(
    ("settings_changes", "options", "message"),
    [
        ({"EVM_CHAIN_ID": 30}, {}, "the EVM node serves chain id 31337, expected 30"),
        ({}, {"chain_id": 1}, "the EVM node serves chain id 31337, expected 1"),
        ({"LENDER_EVM_PRIVATE_KEY": ""}, {}, "no lender EVM key"),
        ({}, {"lender_key": "0x1234"}, "private key must be 32 bytes"),
        ({"LENDER_BTC_PRIVATE_KEY": ""}, {}, "no lender Bitcoin key"),
        ({}, {"lender_btc_pubkey": "abc"}, "64 hex characters"),
        ({}, {"t_btc_escrow": 40}, "t_0 .* must exceed t_B"),
        ({}, {"t_btc_collateral": 2_000_000, "loan_duration": 1_000_000}, "CSV lock"),
        ({}, {"rpc_url": "http://127.0.0.1:9"}, "cannot reach the EVM node"),
    ],
)
def test_deploy_command_bad_input_is_one_clear_error(
    w3: Web3,
    evm_settings: Any,
    tmp_path: Path,
    settings_changes: dict[str, Any],
    options: dict[str, Any],
    message: str,
) -> None:
    output = tmp_path / "deployment.json"
    evm_settings.LENDER_EVM_PRIVATE_KEY = ANVIL_DEFAULT_KEYS[0]
    evm_settings.LENDER_BTC_PRIVATE_KEY = "01".rjust(64, "0")
    for name, value in settings_changes.items():
        setattr(evm_settings, name, value)
    before = _state(w3)
    with pytest.raises(CommandError, match=message) as caught:
        call_command("deploy_contracts", output=output, **{**COMMAND_TIMELOCKS, **options})
    assert "\n" not in str(caught.value)
    assert not output.exists()
    assert _state(w3) == before
