"""bitcoin: what the backend knows about Bitcoin.

Facts observed on chain (payments to watched scripts, spends of watched outpoints, our own
transactions' confirmations) and the actions we take (`BitcoinTransaction`). Loans are named by
an opaque `loan_ref` string: this app never imports `loans`.
"""

from __future__ import annotations

from django.db import models


class ScanCursor(models.Model):
    """How far the block scanner got: the last block fully processed, by height and hash."""

    network = models.CharField(max_length=16, unique=True)
    height = models.IntegerField()
    block_hash = models.CharField(max_length=64)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.network}@{self.height}"


class ScannedBlock(models.Model):
    """A block the scanner processed; recent hashes find the fork point of a reorg."""

    network = models.CharField(max_length=16)
    height = models.IntegerField()
    block_hash = models.CharField(max_length=64)
    prev_hash = models.CharField(max_length=64)
    scanned_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["network", "height"], name="bitcoin_block_height_uniq")
        ]

    def __str__(self) -> str:
        return f"{self.height} {self.block_hash[:16]}"


class WatchPurpose(models.TextChoices):
    ESCROW = "escrow", "escrow (output_0)"
    COLLATERAL = "collateral", "collateral (output_1)"
    OTHER = "other", "other"


class WatchedScript(models.Model):
    """A scriptPubKey (an escrow address) whose incoming payments we report."""

    script_pubkey = models.CharField(max_length=200, unique=True)  # hex
    address = models.CharField(max_length=100, blank=True)
    purpose = models.CharField(max_length=16, choices=WatchPurpose.choices)
    loan_ref = models.CharField(max_length=64, db_index=True)
    target_confirmations = models.PositiveIntegerField()
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.purpose} {self.address or self.script_pubkey[:20]} ({self.loan_ref})"


class WatchedOutpoint(models.Model):
    """An output (escrow, collateral) whose spend we report, with the leaf and preimage."""

    txid = models.CharField(max_length=64)
    vout = models.PositiveIntegerField()
    purpose = models.CharField(max_length=16, choices=WatchPurpose.choices)
    loan_ref = models.CharField(max_length=64, db_index=True)
    target_confirmations = models.PositiveIntegerField()
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["txid", "vout"], name="bitcoin_watched_outpoint_uniq")
        ]

    def __str__(self) -> str:
        return f"{self.purpose} {self.txid}:{self.vout} ({self.loan_ref})"


class ObservationStatus(models.TextChoices):
    MEMPOOL = "mempool", "in mempool"
    CONFIRMED = "confirmed", "confirmed"
    DROPPED = "dropped", "left the mempool unconfirmed"


class Observation(models.Model):
    """Common to payments and spends: where the transaction is and how deep."""

    txid = models.CharField(max_length=64)
    status = models.CharField(
        max_length=16, choices=ObservationStatus.choices, default=ObservationStatus.MEMPOOL
    )
    block_hash = models.CharField(max_length=64, blank=True)
    block_height = models.IntegerField(null=True, blank=True)
    confirmations = models.PositiveIntegerField(default=0)
    # Confirmation facts already handed on; reset when a reorg un-confirms.
    reported_confirmations = models.PositiveIntegerField(default=0)
    # Bumped by each reorg that un-confirms this, so re-confirmations are new facts.
    epoch = models.PositiveIntegerField(default=0)
    first_seen_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True


class ObservedPayment(Observation):
    """An output paying a watched script."""

    watched = models.ForeignKey(WatchedScript, on_delete=models.PROTECT, related_name="payments")
    vout = models.PositiveIntegerField()
    value_sats = models.BigIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["txid", "vout"], name="bitcoin_payment_outpoint_uniq")
        ]

    def __str__(self) -> str:
        return f"{self.txid}:{self.vout} {self.value_sats} sat {self.status}"


class ObservedSpend(Observation):
    """A transaction spending a watched outpoint: which leaf, which preimage it revealed."""

    watched = models.ForeignKey(WatchedOutpoint, on_delete=models.PROTECT, related_name="spends")
    input_index = models.PositiveIntegerField()
    leaf_index = models.IntegerField(null=True, blank=True)  # None: key path / not ours
    preimage = models.CharField(max_length=64, blank=True)  # hex, revealed by the witness

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["watched", "txid"], name="bitcoin_spend_uniq")
        ]

    def __str__(self) -> str:
        return f"spend of {self.watched_id} by {self.txid} {self.status}"


class TxPurpose(models.TextChoices):
    COLLATERAL_LOCK = "collateral_lock", "TX_1 collateral lock"
    BORROWER_EXIT = "borrower_exit", "borrower exit"
    COLLATERAL_RELEASE = "collateral_release", "collateral release"
    LENDER_SWEEP = "lender_sweep", "lender sweep"
    CPFP = "cpfp", "CPFP child"
    OTHER = "other", "other"


class TxStatus(models.TextChoices):
    BUILT = "built", "built"
    SIGNED = "signed", "signed"
    BROADCAST = "broadcast", "broadcast"
    IN_MEMPOOL = "in_mempool", "in mempool"
    CONFIRMED = "confirmed", "confirmed"
    REPLACED = "replaced", "replaced"
    FAILED = "failed", "failed"


class BitcoinTransaction(models.Model):
    """A transaction of ours, from built to confirmed (the broadcaster's outbox)."""

    txid = models.CharField(max_length=64, unique=True)
    raw_hex = models.TextField()
    purpose = models.CharField(max_length=24, choices=TxPurpose.choices)
    loan_ref = models.CharField(max_length=64, blank=True, db_index=True)
    status = models.CharField(max_length=16, choices=TxStatus.choices, default=TxStatus.BUILT)
    confirmations = models.PositiveIntegerField(default=0)
    block_hash = models.CharField(max_length=64, blank=True)
    block_height = models.IntegerField(null=True, blank=True)
    fee_sats = models.BigIntegerField(null=True, blank=True)
    vsize = models.PositiveIntegerField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    # A CPFP child points at the transaction it pays for.
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="children"
    )
    reported_confirmations = models.PositiveIntegerField(default=0)
    epoch = models.PositiveIntegerField(default=0)
    first_broadcast_at = models.DateTimeField(null=True, blank=True)
    last_broadcast_at = models.DateTimeField(null=True, blank=True)
    # The height of the first block in which it is too late (TX_1: the escrow's exit path
    # opens); the fee bumper weighs the blocks left against the node's estimate.
    deadline_height = models.IntegerField(null=True, blank=True)
    # The fee-bump this one replaces (a re-signed sweep, a re-bumped CPFP child).
    replaces = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="replaced_by"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["status"], name="bitcoin_tx_status_idx")]

    def __str__(self) -> str:
        return f"{self.purpose} {self.txid[:16]} {self.status}"


class MonitoringStatus(models.TextChoices):
    ACTIVE = "active", "active"
    COMPLETED = "completed", "completed"
    FAILED = "failed", "failed"


class TransactionMonitoring(models.Model):
    """The seed's bitcoin_transaction_monitoring: how long we keep watching a transaction.

    Confirmations themselves live on the transaction (one source of truth)."""

    transaction = models.OneToOneField(
        BitcoinTransaction, on_delete=models.CASCADE, related_name="monitoring"
    )
    status = models.CharField(
        max_length=16, choices=MonitoringStatus.choices, default=MonitoringStatus.ACTIVE
    )
    target_confirmations = models.PositiveIntegerField()
    last_checked_at = models.DateTimeField(null=True, blank=True)
    checks = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return f"monitoring {self.transaction_id} {self.status}"


class TransactionTransition(models.Model):
    """Append-only audit of every status change of a BitcoinTransaction."""

    transaction = models.ForeignKey(
        BitcoinTransaction, on_delete=models.CASCADE, related_name="transitions"
    )
    from_status = models.CharField(max_length=16)
    to_status = models.CharField(max_length=16)
    cause = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.transaction_id}: {self.from_status} -> {self.to_status} ({self.cause})"


class SpendPurpose(models.TextChoices):
    COLLATERAL_LOCK = "collateral_lock", "TX_1 collateral lock"
    LENDER_SWEEP = "lender_sweep", "lender sweep"
    CPFP = "cpfp", "CPFP child"


class RegisteredSpend(models.Model):
    """A spend the lender's key may sign: registered by the backend for a known loan.

    The txid commits to every input, output, nSequence and the locktime (segwit), so the
    signer signs exactly the transaction registered here and nothing else."""

    txid = models.CharField(max_length=64, unique=True)
    unsigned_hex = models.TextField()
    purpose = models.CharField(max_length=24, choices=SpendPurpose.choices)
    loan_ref = models.CharField(max_length=64, db_index=True)
    input_index = models.PositiveIntegerField(default=0)
    prevout_txid = models.CharField(max_length=64)
    prevout_vout = models.PositiveIntegerField()
    prevout_script_pubkey = models.CharField(max_length=200)  # hex
    prevout_value_sats = models.BigIntegerField()
    leaf_script = models.TextField(blank=True)  # hex; empty: key path (CPFP)
    control_block = models.CharField(max_length=200, blank=True)  # hex
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.purpose} {self.txid[:16]} ({self.loan_ref})"


class FactKind(models.TextChoices):
    PAYMENT_SEEN = "payment_seen", "payment to a watched script in the mempool"
    PAYMENT_CONFIRMED = "payment_confirmed", "payment confirmed to a depth"
    PAYMENT_ORPHANED = "payment_orphaned", "payment's block reorged out"
    PAYMENT_DROPPED = "payment_dropped", "payment left the mempool unconfirmed"
    SPEND_SEEN = "spend_seen", "watched outpoint spent (mempool)"
    SPEND_CONFIRMED = "spend_confirmed", "spend confirmed to a depth"
    SPEND_ORPHANED = "spend_orphaned", "spend's block reorged out"
    SPEND_DROPPED = "spend_dropped", "spend left the mempool unconfirmed"
    TX_CONFIRMED = "tx_confirmed", "our transaction confirmed to a depth"
    TX_ORPHANED = "tx_orphaned", "our transaction's block reorged out"
    TX_FAILED = "tx_failed", "our transaction was refused for good"
    TX_REPLACED = "tx_replaced", "our transaction's inputs were spent by another"


class BitcoinFact(models.Model):
    """A fact for `loans`, handed on in id order, exactly once (see bitcoin/facts.py)."""

    kind = models.CharField(max_length=24, choices=FactKind.choices)
    loan_ref = models.CharField(max_length=64, blank=True, db_index=True)
    dedupe_key = models.CharField(max_length=200, unique=True)
    payload = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(
                fields=["id"],
                name="bitcoin_fact_pending_idx",
                condition=models.Q(delivered_at__isnull=True),
            )
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.kind} {self.loan_ref}"


class UtxoStatus(models.TextChoices):
    AVAILABLE = "available", "available"
    RESERVED = "reserved", "reserved for a spend"
    SPENT = "spent", "spent"


class LenderUtxo(models.Model):
    """An output paying the lender's own key-path address (an origination fee output, a
    sweep, a CPFP child's change, a deposit by an operator): the desk's Bitcoin wallet.

    Only confirmed outputs are recorded, so a spend of them never adds an unconfirmed input
    (BIP-125 rule 2). A spend reserves its inputs first (compare-and-set from `available`
    under a row lock), so two workers never pick the same coin."""

    txid = models.CharField(max_length=64)
    vout = models.PositiveIntegerField()
    value_sats = models.BigIntegerField()
    script_pubkey = models.CharField(max_length=200)  # hex
    source = models.CharField(max_length=24)  # the TxPurpose that paid it, or "deposit"
    loan_ref = models.CharField(max_length=64, blank=True)
    confirmed_height = models.IntegerField()
    status = models.CharField(
        max_length=16, choices=UtxoStatus.choices, default=UtxoStatus.AVAILABLE
    )
    # The reservation (a token, then the spending txid once the spend is built).
    reserved_by = models.CharField(max_length=64, blank=True, db_index=True)
    reserved_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["txid", "vout"], name="bitcoin_lender_utxo_uniq")
        ]
        indexes = [models.Index(fields=["status", "value_sats"], name="bitcoin_utxo_pick_idx")]

    def __str__(self) -> str:
        return f"{self.txid[:16]}:{self.vout} {self.value_sats} sat {self.status}"
