"""chainwatch: the EVM side's facts (events, cursors, block hashes) and the lender's outbox."""

from __future__ import annotations

from django.db import models
from django.db.models import Q

# uint256 fits in numeric(78, 0).
UINT256_DIGITS = 78


class ChainCursor(models.Model):
    """How far a chain is indexed: the last indexed block and its hash (a fork shows as a
    different hash at that height), and the adaptive eth_getLogs window."""

    chain_id = models.PositiveBigIntegerField(unique=True)
    block_number = models.BigIntegerField(help_text="last indexed block; -1 before the first")
    block_hash = models.CharField(max_length=66, blank=True, default="")
    window_size = models.PositiveIntegerField(default=0, help_text="0 = the configured default")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"chain {self.chain_id} @ {self.block_number}"


class IndexedBlock(models.Model):
    """The hash of an indexed block that held our events or ended a window: the recent history
    needed to find the fork point exactly. Pruned past the configured reorg history."""

    chain_id = models.PositiveBigIntegerField()
    number = models.BigIntegerField()
    hash = models.CharField(max_length=66)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["chain_id", "number"], name="indexed_block_unique")
        ]

    def __str__(self) -> str:
        return f"{self.chain_id}#{self.number} {self.hash}"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending"
    PROCESSED = "processed"
    FAILED = "failed"
    ORPHANED = "orphaned"


class EvmEvent(models.Model):
    """One decoded log of our contracts (the seed's `evm_events`)."""

    Status = DeliveryStatus

    chain_id = models.PositiveBigIntegerField()
    contract_address = models.CharField(max_length=42)
    contract_name = models.CharField(max_length=40)
    event_name = models.CharField(max_length=64)
    block_number = models.BigIntegerField()
    block_hash = models.CharField(max_length=66)
    transaction_hash = models.CharField(max_length=66)
    log_index = models.PositiveIntegerField()
    args = models.JSONField(help_text="decoded arguments; uint as int, bytes as 0x-hex")
    loan_id = models.DecimalField(
        max_digits=UINT256_DIGITS, decimal_places=0, null=True, blank=True
    )
    # Events of one key are handed on in chain order; keys are independent of each other.
    # "loan:<contract address>:<id>", "swap:<contract address>:<hash>" or "contract:<address>".
    delivery_key = models.CharField(max_length=200)
    status = models.CharField(
        max_length=10, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    orphaned_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "evm_events"
        constraints = [
            models.UniqueConstraint(
                fields=["chain_id", "transaction_hash", "log_index"], name="evm_event_unique"
            )
        ]
        indexes = [
            models.Index(
                fields=["chain_id", "block_number", "log_index"],
                name="evm_event_pending_order",
                condition=Q(status="pending"),
            ),
            models.Index(fields=["chain_id", "delivery_key"], name="evm_event_key"),
            models.Index(fields=["loan_id"], name="evm_event_loan"),
            models.Index(fields=["chain_id", "block_number"], name="evm_event_block"),
        ]

    def __str__(self) -> str:
        return f"{self.event_name} {self.transaction_hash}:{self.log_index} ({self.status})"


class ReorgNotice(models.Model):
    """A reorg orphaned events of a key the consumer had already processed: the consumer must
    re-derive that loan (or swap) from the surviving chain. Delivered like an event, before
    the key's next events."""

    Status = DeliveryStatus

    chain_id = models.PositiveBigIntegerField()
    # The loan is (chain, contract, id): a redeployed contract's loan ids start again at 1.
    contract_address = models.CharField(max_length=42)
    delivery_key = models.CharField(max_length=200)
    loan_id = models.DecimalField(
        max_digits=UINT256_DIGITS, decimal_places=0, null=True, blank=True
    )
    fork_block_number = models.BigIntegerField(help_text="the last block both branches share")
    orphaned_events = models.PositiveIntegerField()
    status = models.CharField(
        max_length=10, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["chain_id", "status"], name="reorg_notice_status")]

    def __str__(self) -> str:
        return f"reorg at {self.fork_block_number}: re-derive {self.delivery_key}"


# --- the lender's transaction outbox ----------------------------------------------------------
class EvmAccountNonce(models.Model):
    """The next nonce of an account we sign for; its row lock serialises nonce assignment."""

    chain_id = models.PositiveBigIntegerField()
    address = models.CharField(max_length=42)
    next_nonce = models.PositiveBigIntegerField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["chain_id", "address"], name="evm_nonce_unique")
        ]

    def __str__(self) -> str:
        return f"{self.address} next nonce {self.next_nonce}"


class OutboxStatus(models.TextChoices):
    QUEUED = "queued"  # intended, not signed
    SIGNED = "signed"  # nonce assigned and signed: must reach the chain, never abandoned
    SENT = "sent"  # accepted by the node
    MINED = "mined"  # receipt seen, fewer than the configured confirmations
    CONFIRMED = "confirmed"  # succeeded, confirmed
    REVERTED = "reverted"  # failed on chain (or in estimation), with its reason
    FAILED = "failed"  # could not be built or its nonce was taken by another transaction
    REFUSED = "refused"  # its guard refused it before it was signed: nothing was sent
    CANCELLING = "cancelling"  # its guard refused it while pending: a 0-value replacement is out
    CANCELLED = "cancelled"  # the replacement took its nonce: the call never happened


class EvmTransaction(models.Model):
    """One intended lender call: a row per loan and action, signed once, tracked to a receipt."""

    Status = OutboxStatus

    chain_id = models.PositiveBigIntegerField()
    loan_ref = models.CharField(max_length=80)
    action = models.CharField(max_length=80)
    contract_name = models.CharField(max_length=40)
    to_address = models.CharField(max_length=42)
    function = models.CharField(max_length=80)
    args = models.JSONField(help_text="call arguments; bytes as 0x-hex, uint as int or str")
    value_wei = models.DecimalField(max_digits=UINT256_DIGITS, decimal_places=0, default=0)
    gas_limit = models.PositiveBigIntegerField(null=True, blank=True)
    gas_price_wei = models.DecimalField(
        max_digits=UINT256_DIGITS, decimal_places=0, null=True, blank=True
    )
    from_address = models.CharField(max_length=42, blank=True, default="")
    nonce = models.PositiveBigIntegerField(null=True, blank=True)
    tx_hash = models.CharField(max_length=66, blank=True, default="")
    status = models.CharField(
        max_length=10, choices=OutboxStatus.choices, default=OutboxStatus.QUEUED
    )
    send_attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    revert_reason = models.TextField(blank=True, default="")
    block_number = models.BigIntegerField(null=True, blank=True)
    block_hash = models.CharField(max_length=66, blank=True, default="")
    gas_used = models.PositiveBigIntegerField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    confirmed_at = models.DateTimeField(null=True, blank=True)
    # Retries by policy of a reverted or lost call whose guard still holds (docs/chainwatch.md).
    retries = models.PositiveIntegerField(default=0)
    next_retry_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["chain_id", "loan_ref", "action"], name="evm_tx_one_per_loan_action"
            ),
            models.UniqueConstraint(
                fields=["chain_id", "from_address", "nonce"],
                name="evm_tx_nonce_unique",
                condition=Q(nonce__isnull=False),
            ),
        ]
        indexes = [models.Index(fields=["status"], name="evm_tx_status")]

    def __str__(self) -> str:
        return f"{self.function} for {self.loan_ref}/{self.action} ({self.status})"


class AttemptKind(models.TextChoices):
    SIGNED = "signed"  # the call, signed with a nonce for the first time (or after a retry)
    BUMPED = "bumped"  # the same call and nonce at a higher gas price
    CANCEL = "cancel"  # a 0-value self-transfer at a higher gas price that takes the nonce


class EvmTransactionAttempt(models.Model):
    """Every transaction signed for an outbox row: its first signature, each same-nonce
    replacement (fee bump or cancellation) and each retry. Any of a nonce's attempts may be
    the one mined, so the tracker looks for all of them."""

    transaction = models.ForeignKey(
        EvmTransaction, on_delete=models.CASCADE, related_name="attempts"
    )
    kind = models.CharField(max_length=10, choices=AttemptKind.choices)
    nonce = models.PositiveBigIntegerField()
    gas_price_wei = models.DecimalField(max_digits=UINT256_DIGITS, decimal_places=0)
    tx_hash = models.CharField(max_length=66, unique=True)
    reason = models.CharField(max_length=300, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["transaction", "nonce"], name="evm_attempt_nonce")]

    def __str__(self) -> str:
        return f"{self.kind} nonce {self.nonce} at {self.gas_price_wei} wei/gas"
