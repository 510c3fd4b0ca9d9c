"""Our loan contracts on an EVM node: artifacts, compilation, deployment and a party driver.

- `artifacts`: the committed ABI + bytecode (`load_artifact`), rebuilt by `compiler`
  (`manage.py compile_contracts`, solc-js from node_modules).
- `deploy`: `TimelockParameters`, `deploy_contracts` (`manage.py deploy_contracts`), and the
  deployment record the service reads (`configured_deployment`).
- `driver`: borrower and lender actions and typed reads, for tests and the demo.
- `sender` / `errors`: signing with a local key, and the typed errors (`ContractRevert`
  carries the decoded revert reason).

Money flows of our BtcCollateralLoan (amount A, bond B = 10% of A, processing fee F); the
seed's deployed contracts differ (see PROTOCOL.md), and the backend must not rely on these:
request: borrower pays F | offer: lender pays A + B (A locked for the borrower under H_B) |
accept offer: borrower gets A + F | offer withdrawn after t_B: lender gets A + B + F |
repay: A locked under the stored H_L | repayment accepted within t_L: lender gets A + B |
repayment withdrawn after t_L: borrower gets A + B | default after D: lender gets B.
"""
