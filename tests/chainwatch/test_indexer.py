"""The indexer on anvil with the real contracts: decoded, once, in order, confirmed, reorg-safe."""

from __future__ import annotations

import io
import logging
from typing import Any

import pytest
from django.core.management import call_command
from django.forms.models import model_to_dict
from django.utils import timezone

from btcloan.locks import single_flight
from btcloan.models import Alert
from chainwatch.evm.artifacts import load_abi
from chainwatch.indexer.decoding import protocol_specs, specs_from_abi
from chainwatch.models import ChainCursor, DeliveryStatus, EvmEvent, ReorgNotice
from chainwatch.services import chain_sync, event_retry, sync_lock_name
from chainwatch.tasks import poll
from tests.chainwatch.conftest import Chain, SimulatedCrash, SinkConsumer, sink_rows
from tests.chainwatch.helpers import expected_events, full_lifecycle, request_loan, stored_events

pytestmark = [pytest.mark.evm, pytest.mark.django_db]


def loan_key(chain: Chain, loan_id: Any) -> str:
    """A loan's delivery key names the contract: a redeployed contract's loan 1 is another."""
    return f"loan:{chain.contracts.loan_address.lower()}:{loan_id}"


def test_the_compiled_events_are_the_protocols() -> None:
    compiled = {
        (s.contract_name, s.signature): s
        for name in ("BtcCollateralLoan", "EtherSwap")
        for s in specs_from_abi(name, load_abi(name))
    }
    for spec in protocol_specs():
        assert compiled[(spec.contract_name, spec.signature)] == spec


def test_a_lifecycles_events_arrive_decoded_in_order_and_once(
    chain: Chain, sink: SinkConsumer
) -> None:
    chain.settings.EVM_START_BLOCK = chain.contracts.block_number  # the deployment's too
    loan_id, receipts = full_lifecycle(chain)
    assert chain_sync().status == "ok"
    assert chain_sync().delivery.delivered == 0  # type: ignore[union-attr]

    expected = expected_events(chain, receipts)
    ours = {e[0] for e in expected}
    # The same as web3's own decoder reads the receipts, in (block, log index) order.
    assert [e for e in stored_events() if e[0] in ours] == expected
    names = [e[2] for e in expected]
    assert sorted(names) == sorted(
        [
            "LoanRequested",
            "LenderPreimageHashAssociated",
            "Lockup",
            "LoanOffered",
            "Claim",
            "LoanActivated",
            "Lockup",
            "RepaymentAttempted",
            "Claim",
            "RepaymentAccepted",
            "LoanDeleted",
        ]
    )
    assert (names[0], names[-1]) == ("LoanRequested", "LoanDeleted")
    # The deployment's own events (ownership, EtherSwap link) are indexed and handed on too.
    assert {"OwnershipTransferred", "EtherSwapAddressSet"} <= set(
        EvmEvent.objects.values_list("event_name", flat=True)
    )
    expected = stored_events()

    handed = sink_rows()
    assert len(handed) == len(expected)
    assert [(r[3], r[4]) for r in handed] == sorted((r[3], r[4]) for r in handed)
    assert not EvmEvent.objects.exclude(status=DeliveryStatus.PROCESSED).exists()
    loan_events = EvmEvent.objects.filter(loan_id=loan_id)
    assert {e.delivery_key for e in loan_events} == {loan_key(chain, loan_id)}
    activated = loan_events.get(event_name="LoanActivated")
    assert activated.args["preimageBorrower"].startswith("0x")
    assert len(activated.args["preimageBorrower"]) == 66
    offered = loan_events.get(event_name="LoanOffered")
    assert offered.args["amount"] == 10**16
    assert offered.args["bondAmount"] == 10**15


def test_events_below_the_confirmations_are_not_handed_on(chain: Chain, sink: SinkConsumer) -> None:
    chain.settings.EVM_CONFIRMATIONS = 3
    request_loan(chain, 1)
    chain_sync()
    chain.mine(2)
    chain_sync()  # the request is 2 deep

    def requests_handed_on() -> list[str]:
        return [r[1] for r in sink_rows() if r[1] == "LoanRequested"]

    assert requests_handed_on() == []
    assert not EvmEvent.objects.filter(event_name="LoanRequested").exists()
    chain.mine(1)
    chain_sync()
    assert requests_handed_on() == ["LoanRequested"]
    assert ChainCursor.objects.get().block_number == chain.head() - 3


@pytest.mark.parametrize("depth", [1, 3])
def test_a_reorg_orphans_exactly_the_replaced_events(
    chain: Chain, sink: SinkConsumer, depth: int
) -> None:
    kept_id, _, _ = request_loan(chain, 1)
    fork_block = chain.head()
    snapshot = chain.rpc("evm_snapshot", [])
    # The old branch: `depth` blocks, each with a loan request, all indexed and handed on.
    lost_ids = [request_loan(chain, 2 + n)[0] for n in range(depth)]
    assert chain.head() == fork_block + depth
    chain_sync()
    old_branch = set(
        EvmEvent.objects.filter(block_number__gt=fork_block).values_list("pk", flat=True)
    )
    assert len(old_branch) == depth
    kept = set(EvmEvent.objects.filter(block_number__lte=fork_block).values_list("pk", flat=True))
    assert kept

    # The new branch replaces those blocks (one more, so it is the longer chain); another
    # borrower's request there gets the id the first lost loan had.
    assert chain.rpc("evm_revert", [snapshot]) is True
    new_id, _, _ = request_loan(chain, 9)
    chain.mine(depth)
    assert chain.head() == fork_block + depth + 1
    assert new_id == lost_ids[0]
    summary = chain_sync()

    assert summary.index is not None
    assert summary.index.reorgs == [fork_block]
    orphaned = set(
        EvmEvent.objects.filter(status=DeliveryStatus.ORPHANED).values_list("pk", flat=True)
    )
    assert orphaned == old_branch
    assert (
        set(
            EvmEvent.objects.filter(
                status=DeliveryStatus.PROCESSED, block_number__lte=fork_block
            ).values_list("pk", flat=True)
        )
        == kept
    )
    new_events = EvmEvent.objects.filter(block_number__gt=fork_block).exclude(pk__in=old_branch)
    assert [(e.event_name, e.loan_id, e.status) for e in new_events] == [
        ("LoanRequested", new_id, DeliveryStatus.PROCESSED)
    ]
    # The consumer is told to re-derive each loan whose processed events went away, before
    # any event of the new branch for that loan.
    notices = ReorgNotice.objects.order_by("delivery_key")
    assert [
        (n.delivery_key, n.fork_block_number, n.orphaned_events, n.status) for n in notices
    ] == [(loan_key(chain, i), fork_block, 1, DeliveryStatus.PROCESSED) for i in sorted(lost_ids)]
    assert {n.contract_address for n in notices} == {chain.contracts.loan_address}
    timeline = [r[0] for r in sink_rows(None) if r[3] == loan_key(chain, new_id)]
    assert timeline == ["event", "reorg", "event"]
    # Each live event was handed on exactly once.
    handed = [r[0] for r in sink_rows()]
    assert len(handed) == len(set(handed)) == len(kept) + len(old_branch) + 1
    assert kept_id not in lost_ids


def test_a_crash_between_insert_and_hand_off_loses_nothing(
    chain: Chain, sink: SinkConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, receipts = full_lifecycle(chain)
    import chainwatch.services as services

    def crash(**kwargs: Any) -> None:
        raise SimulatedCrash("killed after the events were stored")

    monkeypatch.setattr(services, "deliver_events", crash)
    with pytest.raises(SimulatedCrash):
        chain_sync()
    assert EvmEvent.objects.filter(status=DeliveryStatus.PENDING).count() == len(
        expected_events(chain, receipts)
    )
    assert sink_rows() == []
    monkeypatch.undo()
    chain_sync()
    handed = [r[0] for r in sink_rows()]
    assert sorted(handed) == sorted(EvmEvent.objects.values_list("pk", flat=True))


def test_a_crash_between_hand_off_and_processing_repeats_nothing(
    chain: Chain, sink: SinkConsumer
) -> None:
    _, receipts = full_lifecycle(chain)
    chain.settings.CHAINWATCH_DELIVERY_COMMIT_EVERY = 2
    sink.crash_on_event = 3  # dies after its 3rd write: the first pair committed, not the 2nd
    with pytest.raises(SimulatedCrash):
        chain_sync()
    assert len(sink_rows()) == 2
    assert EvmEvent.objects.filter(status=DeliveryStatus.PROCESSED).count() == 2
    sink.crash_on_event = None
    chain_sync()
    handed = [r[0] for r in sink_rows()]
    assert len(handed) == len(set(handed)) == len(expected_events(chain, receipts))


def test_a_failing_event_is_retried_then_parked_without_blocking_other_loans(
    chain: Chain, sink: SinkConsumer, caplog: pytest.LogCaptureFixture
) -> None:
    stuck, _, _ = request_loan(chain, 1)
    chain.settings.CHAINWATCH_RETRY_BASE_SECONDS = 3600.0
    sink.fail_keys = {loan_key(chain, stuck)}
    chain_sync()
    first = EvmEvent.objects.get(loan_id=stuck)
    assert (first.status, first.attempts) == (DeliveryStatus.PENDING, 1)
    assert "cannot apply LoanRequested" in first.last_error
    chain_sync()  # backing off: not retried yet
    assert EvmEvent.objects.get(loan_id=stuck).attempts == 1

    # The hour passes; from now on retries are immediate.
    EvmEvent.objects.filter(loan_id=stuck).update(next_attempt_at=timezone.now())
    chain.settings.CHAINWATCH_RETRY_BASE_SECONDS = 0.0
    fine, _, _ = request_loan(chain, 2)
    chain.lender.associate_preimage_hash(stuck, b"\x07" * 32)  # a later event of the stuck loan
    with caplog.at_level(logging.ERROR, logger="chainwatch"):
        chain_sync()
        chain_sync()
    parked = EvmEvent.objects.get(loan_id=stuck, event_name="LoanRequested")
    assert (parked.status, parked.attempts) == (DeliveryStatus.FAILED, 3)
    assert any("ALERT" in r.getMessage() and "parked" in r.getMessage() for r in caplog.records)
    alert = Alert.objects.get(key=f"chainwatch:parked:EvmEvent:{parked.pk}")
    assert (alert.severity, alert.loan_ref, alert.resolved_at) == ("critical", str(stuck), None)
    later = EvmEvent.objects.get(loan_id=stuck, event_name="LenderPreimageHashAssociated")
    assert later.status == DeliveryStatus.PENDING
    assert later.attempts == 0
    assert [r[2] for r in sink_rows()] == [loan_key(chain, fine)]  # the other loan went through

    sink.fail_keys = set()
    assert event_retry(event_id=parked.pk)
    alert.refresh_from_db()
    assert alert.resolved_at is not None
    chain_sync()
    assert [r[1] for r in sink_rows() if r[2] == loan_key(chain, stuck)] == [
        "LoanRequested",
        "LenderPreimageHashAssociated",
    ]


def test_a_replay_over_an_indexed_range_changes_nothing(chain: Chain, sink: SinkConsumer) -> None:
    full_lifecycle(chain)
    chain_sync()
    before = [model_to_dict(e) for e in EvmEvent.objects.order_by("pk")]
    cursor = model_to_dict(ChainCursor.objects.get())
    progress = io.StringIO()
    call_command("chainwatch_replay", from_block=chain.settings.EVM_START_BLOCK, stderr=progress)
    assert "100.0%" in progress.getvalue()
    assert [model_to_dict(e) for e in EvmEvent.objects.order_by("pk")] == before
    assert model_to_dict(ChainCursor.objects.get()) == cursor
    # A missing event (lost to a bug, or a database restore) comes back, pending.
    missing = EvmEvent.objects.get(event_name="LoanActivated")
    missing.delete()
    call_command("chainwatch_replay", from_block=chain.contracts.block_number, no_progress=True)
    back = EvmEvent.objects.get(event_name="LoanActivated")
    assert (back.transaction_hash, back.status) == (missing.transaction_hash, "pending")


def test_node_downtime_is_retried_not_fatal(chain: Chain, sink: SinkConsumer) -> None:
    from btcloan.dev.localnodes import free_port
    from chainwatch.client import use_web3

    request_loan(chain, 1)
    use_web3(None)
    chain.settings.EVM_RPC_URL = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    assert poll() == {
        "status": "node_unavailable",
        "indexed_to": None,
        "inserted": 0,
        "delivered": 0,
    }

    # The node comes back; then it fails in the middle of a pass.
    use_web3(chain.w3)
    calls = {"n": 0}
    real = chain.w3.provider.make_request

    def flaky(method: Any, params: Any) -> Any:
        calls["n"] += 1
        if method == "eth_getLogs" and calls["n"] < 50:
            import requests

            raise requests.exceptions.ConnectionError("node restarting")
        return real(method, params)

    chain.w3.provider.make_request = flaky  # type: ignore[method-assign]
    try:
        assert chain_sync().status == "node_unavailable"
        assert not EvmEvent.objects.exists()
        calls["n"] = 100
        assert chain_sync().status == "ok"
    finally:
        chain.w3.provider.make_request = real  # type: ignore[method-assign]
    assert [r[1] for r in sink_rows()] == ["LoanRequested"]


def test_a_too_large_log_query_shrinks_the_window(chain: Chain, sink: SinkConsumer) -> None:
    for n in (1, 2, 3):
        request_loan(chain, n)
        chain.mine(5)
    real = chain.w3.provider.make_request
    sizes = []

    def limited(method: Any, params: Any) -> Any:
        if method == "eth_getLogs":
            size = int(params[0]["toBlock"], 16) - int(params[0]["fromBlock"], 16) + 1
            sizes.append(size)
            if size > 4:
                return {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "error": {"code": -32005, "message": "query returned more than 10000 results"},
                }
        return real(method, params)

    chain.w3.provider.make_request = limited  # type: ignore[method-assign]
    try:
        chain_sync()
    finally:
        chain.w3.provider.make_request = real  # type: ignore[method-assign]
    assert max(sizes) > 4
    assert sizes[-1] <= 4
    assert EvmEvent.objects.filter(event_name="LoanRequested").count() == 3
    assert len(sink_rows()) == 3


def test_the_poller_is_single_flight(chain: Chain, sink: SinkConsumer) -> None:
    request_loan(chain, 1)
    with single_flight(sync_lock_name(chain.settings.EVM_CHAIN_ID), timeout=30) as held:
        assert held
        assert chain_sync().status == "busy"
    assert not EvmEvent.objects.exists()
    assert chain_sync().status == "ok"


def test_a_node_of_another_chain_is_refused_at_start_up(chain: Chain) -> None:
    from chainwatch.client import ChainIdMismatch, reset_web3, use_web3

    use_web3(None)
    reset_web3()
    chain.settings.EVM_CHAIN_ID = 30  # Rootstock mainnet; the node is anvil's 31337
    with pytest.raises(ChainIdMismatch, match="31337"):
        chain_sync()
    assert not ChainCursor.objects.exists()


def test_the_poller_waits_quietly_for_a_deployment(chain: Chain, tmp_path: Any) -> None:
    chain.settings.LOAN_CONTRACT_ADDRESS = chain.settings.ETHERSWAP_CONTRACT_ADDRESS = ""
    chain.settings.DEPLOYMENT_FILE = tmp_path / "none.json"
    assert poll() == {"status": "not_configured"}


def test_a_transaction_mined_again_in_the_new_branch_revives_its_event(
    chain: Chain, sink: SinkConsumer
) -> None:
    snapshot = chain.rpc("evm_snapshot", [])
    loan_id, _, receipt = request_loan(chain, 1)
    raw = chain.rpc("eth_getRawTransactionByHash", ["0x" + bytes(receipt["transactionHash"]).hex()])
    chain_sync()
    event = EvmEvent.objects.get(event_name="LoanRequested")
    old_hash = event.block_hash

    assert chain.rpc("evm_revert", [snapshot]) is True
    chain.mine(1)  # the new branch: an empty block, then the same transaction again
    chain.borrower(1)  # (funds the borrower again: the revert took its balance)
    chain.rpc("eth_sendRawTransaction", [raw])
    chain_sync()

    event.refresh_from_db()
    assert event.status == DeliveryStatus.PROCESSED
    assert event.block_hash != old_hash
    assert EvmEvent.objects.filter(event_name="LoanRequested").count() == 1
    # Handed on twice, with the reorg notice between: the consumer re-derived in between.
    key = loan_key(chain, loan_id)
    assert [(r[0], r[1]) for r in sink_rows(None) if r[3] == key] == [
        ("event", event.pk),
        ("reorg", ReorgNotice.objects.get().pk),
        ("event", event.pk),
    ]


def test_any_text_the_chain_carries_is_stored_as_web3_decodes_it(
    chain: Chain, sink: SinkConsumer
) -> None:
    """The contract takes any 62-64 bytes as a BTC address: what the bulk insert's COPY text
    would misread (a backslash, COPY's null marker, tab, newline, quotes, non-ASCII) is stored
    verbatim."""
    odd = 'bcrt1p\\N\t"\n\r\\\\é€{}' + "q" * 42
    assert 62 <= len(odd.encode()) <= 64
    party = chain.borrower(1)
    receipt = party.send(
        party.loan.functions.requestLoan(10**16, odd, "ab" * 32, b"\x11" * 32, b"\x22" * 32, 0),
        value=party.contracts.processing_fee(),
    )
    assert chain_sync().status == "ok"

    requested = [e for e in expected_events(chain, [receipt]) if e[2] == "LoanRequested"]
    assert requested[0][3]["btcAddress"] == odd
    assert stored_events(event_name="LoanRequested") == requested
    stored = EvmEvent.objects.get(event_name="LoanRequested")
    assert [r[0] for r in sink_rows() if r[1] == "LoanRequested"] == [stored.pk]


def test_a_reorg_after_the_pass_checked_its_cursor_is_still_caught(
    chain: Chain, sink: SinkConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fork check runs once a pass; a reorg right after it is caught by the next window,
    whose parent is no longer the cursor's block: its events are never stored over the old
    branch's."""
    from chainwatch.indexer import sync

    kept_id, _, _ = request_loan(chain, 1)
    fork_block = chain.head()
    snapshot = chain.rpc("evm_snapshot", [])
    lost_id, _, _ = request_loan(chain, 2)
    assert chain_sync().status == "ok"
    lost = EvmEvent.objects.get(event_name="LoanRequested", loan_id=lost_id)

    real_head = sync.head_number
    reorged: list[int] = []

    def reorg_then_head(w3: Any) -> int:
        if not reorged:  # after this pass's fork check: a longer branch without loan 2
            assert chain.rpc("evm_revert", [snapshot]) is True
            chain.mine(3)
            reorged.append(chain.head())
        return real_head(w3)

    monkeypatch.setattr(sync, "head_number", reorg_then_head)
    summary = chain_sync()

    assert reorged
    assert summary.index is not None
    assert summary.index.reorgs == [fork_block]
    lost.refresh_from_db()
    assert lost.status == DeliveryStatus.ORPHANED
    assert ChainCursor.objects.get().block_number == reorged[0]
    assert [n.delivery_key for n in ReorgNotice.objects.all()] == [loan_key(chain, lost_id)]
    assert EvmEvent.objects.get(loan_id=kept_id, event_name="LoanRequested").status == (
        DeliveryStatus.PROCESSED
    )


def test_a_catch_up_over_many_windows_stores_each_event_once_in_order(
    chain: Chain, sink: SinkConsumer
) -> None:
    """Windows of one or two blocks: each is read while the one before it is stored."""
    chain.settings.CHAINWATCH_LOG_WINDOW = 1
    chain.settings.CHAINWATCH_LOG_WINDOW_MAX = 2
    ids = []
    for n in range(1, 6):
        ids.append(request_loan(chain, n)[0])
        chain.mine(1)

    summary = chain_sync()

    assert summary.index is not None
    assert summary.index.windows >= 5
    assert summary.index.indexed_to == chain.head() == ChainCursor.objects.get().block_number
    requested = EvmEvent.objects.filter(event_name="LoanRequested").order_by("block_number")
    assert [int(e.loan_id) for e in requested] == ids  # type: ignore[arg-type]
    assert [r[0] for r in sink_rows()] == [
        e.pk for e in EvmEvent.objects.order_by("block_number", "log_index")
    ]
