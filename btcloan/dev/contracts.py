"""The contracts as tests and the demo deploy them: anvil key 0 as lender, short timelocks."""

from __future__ import annotations

from dataclasses import dataclass

from eth_typing import ChecksumAddress
from web3 import Web3
from web3.contract.contract import Contract

from btcloan.dev.localnodes import ANVIL_DEFAULT_KEYS
from chainwatch.evm.deploy import Deployment, TimelockParameters, deploy_contracts
from chainwatch.evm.driver import LoanContracts
from chainwatch.evm.flavour import ContractFlavour

# Short enough to pass with anvil_mine, with the seed's orderings (t_0 > t_B, t_1 > t_L + D).
TEST_TIMELOCKS = TimelockParameters(
    loan_duration=40, t_borrower=5, t_btc_escrow=10, t_lender=5, t_btc_collateral=50
)
# x-only public key of the secret key 1 (the generator's x): a public, well-known test key.
TEST_LENDER_BTC_PUBKEY = "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"


@dataclass(frozen=True)
class DeployedContracts:
    """Both contracts deployed and linked, with what tests need to drive and index them."""

    deployment: Deployment
    contracts: LoanContracts
    lender_private_key: str
    lender_btc_pubkey: str
    parameters: TimelockParameters

    @property
    def flavour(self) -> ContractFlavour:
        return ContractFlavour(self.deployment.flavour or ContractFlavour.BTCLOAN)

    @property
    def chain_id(self) -> int:
        return self.deployment.chain_id

    @property
    def loan(self) -> Contract:
        return self.contracts.loan

    @property
    def etherswap(self) -> Contract:
        return self.contracts.etherswap

    @property
    def loan_address(self) -> ChecksumAddress:
        return self.deployment.loan_address

    @property
    def etherswap_address(self) -> ChecksumAddress:
        return self.deployment.etherswap_address

    @property
    def block_number(self) -> int:
        return self.deployment.block_number

    @property
    def lender_address(self) -> ChecksumAddress:
        assert self.deployment.lender_address is not None  # deploy_contracts always sets it
        return self.deployment.lender_address


def deploy_for_tests(
    w3: Web3,
    *,
    parameters: TimelockParameters = TEST_TIMELOCKS,
    lender_private_key: str = ANVIL_DEFAULT_KEYS[0],
    lender_btc_pubkey: str = TEST_LENDER_BTC_PUBKEY,
    flavour: ContractFlavour = ContractFlavour.BTCLOAN,
) -> DeployedContracts:
    chain_id = int(w3.eth.chain_id)
    deployment = deploy_contracts(
        w3=w3,
        lender_private_key=lender_private_key,
        lender_btc_pubkey=lender_btc_pubkey,
        parameters=parameters,
        expected_chain_id=chain_id,
        flavour=flavour,
    )
    return DeployedContracts(
        deployment=deployment,
        contracts=LoanContracts.from_deployment(w3, deployment),
        lender_private_key=lender_private_key,
        lender_btc_pubkey=lender_btc_pubkey,
        parameters=parameters,
    )
