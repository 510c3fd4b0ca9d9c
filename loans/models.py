"""The loan domain: loans, their workflows, the append-only audit trail, borrower signatures.

State changes go through `loans.services.lifecycle` only (a compare-and-set UPDATE with its
audit row), never through `save()` on a loaded row.
"""

from __future__ import annotations

from typing import Any

from django.db import models
from django.db.models import Q


def wei_field(**options: Any) -> models.DecimalField:
    """A uint256 (wei, ids) as numeric(78,0): exact, never float."""
    return models.DecimalField(max_digits=78, decimal_places=0, **options)


class LoanStatus(models.TextChoices):
    """The contract's eight statuses (same order as its enum), then the backend's own."""

    REQUESTED = "requested", "Requested"
    OFFERED = "offered", "Offered"
    ACTIVE = "active", "Active"
    REFUNDED_TO_LENDER = "refunded_to_lender", "Refunded to lender"
    REPAYMENT_IN_PROGRESS = "repayment_in_progress", "Repayment in progress"
    REPAID = "repaid", "Repaid"
    REFUNDED_TO_BORROWER = "refunded_to_borrower", "Refunded to borrower"
    DEFAULTED = "defaulted", "Defaulted"
    # Backend-only: every obligation on both chains is settled; the contract deleted the loan;
    # the request can never be offered (its escrow does not match, say).
    CLOSED = "closed", "Closed"
    DELETED = "deleted", "Deleted"
    INVALID = "invalid", "Invalid"


# The contract's uint8 status, in enum order.
CONTRACT_STATUSES: tuple[LoanStatus, ...] = (
    LoanStatus.REQUESTED,
    LoanStatus.OFFERED,
    LoanStatus.ACTIVE,
    LoanStatus.REFUNDED_TO_LENDER,
    LoanStatus.REPAYMENT_IN_PROGRESS,
    LoanStatus.REPAID,
    LoanStatus.REFUNDED_TO_BORROWER,
    LoanStatus.DEFAULTED,
)


class ContractFlavour(models.TextChoices):
    """The loan contract's semantics (chainwatch.evm.flavour): deadlines and money flows."""

    BTCLOAN = "btcloan", "btcloan (inclusive deadlines, the loan's own snapshot)"
    SEED = "seed", "seed (strict deadlines, the global loan duration)"


class BitcoinStage(models.TextChoices):
    """How far the loan's Bitcoin side has gone."""

    AWAITING_ESCROW = "awaiting_escrow", "Awaiting escrow deposit"
    ESCROW_SEEN = "escrow_seen", "Escrow deposit seen"
    ESCROW_CONFIRMED = "escrow_confirmed", "Escrow deposit confirmed"
    PRESIGNED = "presigned", "TX_1 pre-signed by the borrower"
    COLLATERAL_LOCKED = "collateral_locked", "TX_1 broadcast"
    COLLATERAL_CONFIRMED = "collateral_confirmed", "Collateral confirmed"
    RELEASED = "released", "Collateral released to the borrower"
    SWEPT = "swept", "Collateral swept by the lender"
    EXITED = "exited", "Escrow exited by the borrower"


class Loan(models.Model):
    # Identity on chain.
    chain_id = models.PositiveBigIntegerField()
    contract_address = models.CharField(max_length=42)
    onchain_id = wei_field(help_text="the contract's loan id (uint256)")

    contract_flavour = models.CharField(
        max_length=16, choices=ContractFlavour.choices, default=ContractFlavour.BTCLOAN
    )
    status = models.CharField(
        max_length=32, choices=LoanStatus.choices, default=LoanStatus.REQUESTED, db_index=True
    )
    bitcoin_stage = models.CharField(
        max_length=32,
        choices=BitcoinStage.choices,
        default=BitcoinStage.AWAITING_ESCROW,
        db_index=True,
    )
    invalid_reason = models.TextField(blank=True)

    # Parties.
    borrower_address = models.CharField(max_length=42, db_index=True)
    borrower_btc_pubkey = models.CharField(max_length=64)
    lender_btc_pubkey = models.CharField(max_length=64)

    # Money: wei as numeric(78,0), sats as integers.
    amount_wei = wei_field()
    bond_wei = wei_field(null=True, blank=True)
    loan_sats = models.BigIntegerField()

    # Preimages and their hashes (hex, no 0x). P_L is encrypted at rest and revealed on chain
    # only when the lender accepts a repayment; P_B is learnt from LoanActivated.
    preimage_hash_borrower = models.CharField(max_length=64)
    preimage_hash_lender = models.CharField(max_length=64, blank=True)
    preimage_borrower = models.CharField(max_length=64, blank=True)
    preimage_lender_encrypted = models.BinaryField(null=True, blank=True, editable=False)
    preimage_lender_revealed_at = models.DateTimeField(null=True, blank=True)

    # Escrow (output_0).
    escrow_address = models.CharField(max_length=90)
    escrow_internal_key = models.CharField(max_length=64, blank=True)
    escrow_txid = models.CharField(max_length=64)
    escrow_vout = models.PositiveIntegerField()
    escrow_value_sats = models.BigIntegerField(null=True, blank=True)
    escrow_confirmed_height = models.PositiveIntegerField(null=True, blank=True)

    # Collateral (output_1 of TX_1).
    collateral_address = models.CharField(max_length=90, blank=True)
    collateral_txid = models.CharField(max_length=64, blank=True)
    collateral_vout = models.PositiveIntegerField(null=True, blank=True)
    collateral_value_sats = models.BigIntegerField(null=True, blank=True)
    collateral_confirmed_height = models.PositiveIntegerField(null=True, blank=True)

    # The loan's parameter snapshot (EVM blocks) and the CSV values derived from it.
    # D: the snapshot on btcloan's contract; on the seed's, the global loanDuration as last read
    # (every change is in the audit trail).
    loan_duration = models.PositiveBigIntegerField()
    timelock_borrower = models.PositiveBigIntegerField(help_text="t_B, EVM blocks")
    timelock_btc_escrow = models.PositiveBigIntegerField(help_text="t_0, EVM blocks")
    timelock_lender = models.PositiveBigIntegerField(help_text="t_L, EVM blocks")
    timelock_btc_collateral = models.PositiveBigIntegerField(help_text="t_1, EVM blocks")
    escrow_csv_blocks = models.PositiveIntegerField(help_text="t0_btc, Bitcoin blocks")
    collateral_csv_blocks = models.PositiveIntegerField(help_text="t1_btc, Bitcoin blocks")

    # TX_1 as built for the borrower's pre-signature: rebuilt from these, bit for bit.
    collateral_lock_feerate = models.PositiveIntegerField(
        null=True, blank=True, help_text="sat/vB TX_1 was built with"
    )
    lender_payout_address = models.CharField(max_length=90, blank=True)

    # Where the last EVM event applied to this loan stands on chain (block, log index): an
    # event at or before it is a replay and changes nothing.
    last_event_block = models.BigIntegerField(null=True, blank=True)
    last_event_log_index = models.PositiveIntegerField(null=True, blank=True)

    # EVM blocks of each step.
    request_block = models.PositiveBigIntegerField()
    offer_block = models.PositiveBigIntegerField(null=True, blank=True)
    activation_block = models.PositiveBigIntegerField(null=True, blank=True)
    repayment_block = models.PositiveBigIntegerField(null=True, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # Bumped by a database trigger on every UPDATE of the row (migration 0005), whoever wrote
    # it: the watchdog compares it with the revision it last looked at.
    revision = models.PositiveBigIntegerField(default=0, editable=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["chain_id", "contract_address", "onchain_id"], name="loan_unique_onchain"
            ),
            models.CheckConstraint(condition=Q(amount_wei__gte=0), name="loan_amount_nonneg"),
            models.CheckConstraint(condition=Q(loan_sats__gte=0), name="loan_sats_nonneg"),
        ]
        indexes = [models.Index(fields=["escrow_txid", "escrow_vout"])]

    def __str__(self) -> str:
        return f"loan {self.onchain_id} on {self.chain_id} ({self.status})"


class WorkflowType(models.TextChoices):
    ESCROW_SETUP = "escrow_setup", "Escrow setup"
    COLLATERAL_SETUP = "collateral_setup", "Collateral setup"
    REPAYMENT = "repayment", "Repayment"
    DEFAULT = "default", "Default"
    SETTLEMENT = "settlement", "Settlement"


class WorkflowStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    WAITING = "waiting", "Waiting (on a chain or an operator)"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


class LoanWorkflow(models.Model):
    """One multi-step job of a loan (the seed's loan_workflows); one per loan and type."""

    loan = models.ForeignKey(Loan, on_delete=models.PROTECT, related_name="workflows")
    type = models.CharField(max_length=32, choices=WorkflowType.choices)
    status = models.CharField(
        max_length=16, choices=WorkflowStatus.choices, default=WorkflowStatus.PENDING
    )
    current_step = models.CharField(max_length=64, blank=True)
    steps_completed = models.JSONField(default=list, blank=True)
    error_details = models.JSONField(default=dict, blank=True)
    retry_count = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["loan", "type"], name="workflow_unique_per_loan_type")
        ]

    def __str__(self) -> str:
        return f"{self.type} of loan {self.loan_id}: {self.status}"


class AuditCause(models.TextChoices):
    EVM_EVENT = "evm_event", "EVM event"
    BITCOIN_FACT = "bitcoin_fact", "Bitcoin observation"
    OPERATOR = "operator", "Operator"
    WATCHDOG = "watchdog", "Timelock watchdog"
    RECONCILER = "reconciler", "Reconciler"
    BACKEND = "backend", "Backend action"
    BORROWER = "borrower", "Borrower (API)"


class AuditAction(models.TextChoices):
    """What an audit row records: one name per kind of entry (filters, metrics and the admin
    rely on them; add a member rather than a free string)."""

    TRANSITION = "transition", "a state transition, applied"
    TRANSITION_REFUSED = "transition_refused", "a transition the table refused"
    REDERIVED = "rederived", "state re-derived after a reorg or by the reconciler"
    ANOMALY = "anomaly", "a fact that contradicts the loan's terms"
    LOAN_REQUESTED = "loan_requested", "request recorded"
    REQUEST_INVALID = "request_invalid", "request refused at intake"
    LENDER_HASH_ASSOCIATED = "lender_hash_associated", "H_L associated on chain"
    FOREIGN_ESCROW_PAYMENT = "foreign_escrow_payment", "another payment to the escrow address"
    BITCOIN_TRANSACTION_FAILED = (
        "bitcoin_transaction_failed",
        "our transaction refused for good",
    )
    BITCOIN_TRANSACTION_REPLACED = (
        "bitcoin_transaction_replaced",
        "our transaction's input spent elsewhere",
    )
    DELETED_ON_CHAIN = "deleted_on_chain", "the contract deleted a closed loan"
    LOAN_DURATION_FOLLOWED = (
        "loan_duration_followed",
        "the seed contract's global loanDuration changed: the loan's follows it",
    )
    TAKEN_UP_AGAIN = "taken_up_again", "an invalid loan offered on chain, followed again"
    OFFER_WAITING = "offer_waiting", "the offer waits (reasons)"
    GUARD_REFUSED = "guard_refused", "a lender action's guard refused it at signing"
    ESCROW_DEPOSIT_SHORT = "escrow_deposit_short", "the escrow deposit cannot pay for TX_1 yet"
    COLLATERAL_LOCK_BUILT = "collateral_lock_built", "TX_1 built"
    BORROWER_PRESIGNED = "borrower_presigned", "the borrower's TX_1 pre-signature verified"
    COLLATERAL_SWEEP_SIGNED = "collateral_sweep_signed", "the lender's sweep signed"
    LENDER_PREIMAGE_GENERATED = "lender_preimage_generated", "P_L generated"
    LENDER_PREIMAGE_RELEASED = "lender_preimage_released", "P_L released for acceptLoanRepayment"
    LENDER_ACTION_HELD = "lender_action_held", "a lender action held for approval"
    LENDER_ACTION_SENT = "lender_action_sent", "a lender action sent to the outbox"
    LENDER_ACTION_APPROVED = "lender_action_approved", "an operator approved a lender action"
    WORKFLOW_FAILED = "workflow_failed", "a workflow failed"
    WORKFLOW_RETRIED = "workflow_retried", "an operator retried a workflow"
    OPERATOR_RAN_WATCHDOG = "operator_ran_watchdog", "an operator ran the watchdog"
    OPERATOR_RECONCILED = "operator_reconciled", "an operator ran the reconciler"


class AuditEntry(models.Model):
    """Append-only: every transition (applied or refused) and every action with its cause.

    On PostgreSQL a trigger refuses UPDATE and DELETE of these rows (migration 0002).
    """

    loan = models.ForeignKey(Loan, on_delete=models.PROTECT, related_name="audit_entries")
    at = models.DateTimeField(auto_now_add=True, db_index=True)
    cause = models.CharField(max_length=16, choices=AuditCause.choices)
    cause_ref = models.CharField(max_length=200, blank=True, help_text="event id, txid, user")
    action = models.CharField(max_length=64, choices=AuditAction.choices)
    field = models.CharField(max_length=16, blank=True)
    from_value = models.CharField(max_length=32, blank=True)
    to_value = models.CharField(max_length=32, blank=True)
    applied = models.BooleanField(default=True)
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["at", "id"]
        verbose_name_plural = "audit entries"

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.action} {self.from_value}->{self.to_value}"


class BorrowerSignature(models.Model):
    """The borrower's pre-signature on TX_1, stored once verified."""

    loan = models.ForeignKey(Loan, on_delete=models.PROTECT, related_name="borrower_signatures")
    txid = models.CharField(max_length=64, help_text="TX_1's txid (unsigned, segwit)")
    sighash = models.CharField(max_length=64)
    signature = models.CharField(max_length=128)
    verified_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["loan", "sighash"], name="signature_unique_per_sighash")
        ]

    def __str__(self) -> str:
        return f"borrower signature on {self.txid}"


class IntakeStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    DONE = "done", "Done"
    FAILED = "failed", "Failed (retrying)"


class LoanRequestIntake(models.Model):
    """A LoanRequested event waiting for its loan to be read from the contract.

    The event handler runs inside chainwatch's transaction and must not call the chain, so it
    records this row; a task then reads getLoan at the event's block and creates the loan.
    """

    chain_id = models.PositiveBigIntegerField()
    contract_address = models.CharField(max_length=42)
    onchain_id = wei_field()
    request_block = models.PositiveBigIntegerField()
    event_ref = models.CharField(max_length=200)
    borrower_address = models.CharField(max_length=42)
    amount_wei = wei_field()
    btc_address = models.CharField(max_length=100)
    status = models.CharField(
        max_length=16, choices=IntakeStatus.choices, default=IntakeStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    loan = models.OneToOneField(
        Loan, null=True, blank=True, on_delete=models.PROTECT, related_name="intake"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["chain_id", "contract_address", "onchain_id"], name="intake_unique_onchain"
            )
        ]

    def __str__(self) -> str:
        return f"intake of loan {self.onchain_id}: {self.status}"


class ApprovalStatus(models.TextChoices):
    PENDING = "pending", "Waiting for an operator"
    APPROVED = "approved", "Approved"


class LenderApproval(models.Model):
    """A lender action held for an operator under the approval policy (one per loan and action)."""

    loan = models.ForeignKey(Loan, on_delete=models.PROTECT, related_name="approvals")
    action = models.CharField(max_length=32)
    status = models.CharField(
        max_length=16, choices=ApprovalStatus.choices, default=ApprovalStatus.PENDING
    )
    requested_at = models.DateTimeField(auto_now_add=True)
    decided_by = models.CharField(max_length=150, blank=True)
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["loan", "action"], name="approval_unique_per_action")
        ]

    def __str__(self) -> str:
        return f"{self.action} for loan {self.loan_id}: {self.status}"


class LoanWatch(models.Model):
    """What the watchdog last saw of a loan, so that a pass acts only on what changed.

    A loan is looked at again when its revision moved, when a head reaches `wake_*` (a
    deadline or an alert threshold comes into view, or a new Bitcoin block for a deposit still
    awaited), or at `redrive_at` while a step is still due (its task may have been lost).
    `due_steps` is what it found due then (for operators and the bench).
    """

    loan = models.OneToOneField(Loan, on_delete=models.CASCADE, related_name="watch")
    seen_revision = models.PositiveBigIntegerField()
    wake_evm_block = models.PositiveBigIntegerField(null=True, blank=True)
    wake_btc_block = models.PositiveBigIntegerField(null=True, blank=True)
    due_steps = models.JSONField(default=list, blank=True)
    redrive_at = models.DateTimeField(null=True, blank=True)
    redrives = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"watch of loan {self.loan_id} at revision {self.seen_revision}"


class PassCursor(models.Model):
    """Where an incremental pass over the open loans stopped (the reconciler's)."""

    name = models.CharField(max_length=32, unique=True)
    last_loan_id = models.PositiveBigIntegerField(default=0)
    sweeps = models.PositiveIntegerField(default=0, help_text="full rounds completed")
    sweep_started_at = models.DateTimeField(null=True, blank=True)
    last_sweep_seconds = models.FloatField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.name} after loan {self.last_loan_id}"
