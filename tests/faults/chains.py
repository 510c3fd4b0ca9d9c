"""Chain faults placed at a step: EVM reorgs (anvil) and Bitcoin reorgs (the regtest node).

A reorg of depth d at a step replaces the block holding the step's transaction and the d-1
blocks after it (which the backend has seen, and acted on as far as its confirmation depth
allows) with a longer branch. As on a real network the replaced blocks' transactions go back
to the mempool and are mined again on the new branch, one block later than before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from web3.types import RPCEndpoint

from tests.faults.lifecycle import Landed
from tests.support.desk import Desk


def _evm(desk: Desk, method: str, *params: Any) -> Any:
    answer = desk.w3.provider.make_request(RPCEndpoint(method), list(params))
    if "error" in answer:
        raise RuntimeError(f"{method}: {answer['error']}")
    return answer.get("result")


@dataclass
class EvmReorg:
    """At `step`, the last `depth` blocks (from the step's block on) are replaced."""

    desk: Desk
    step: str
    depth: int
    done: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, step: str, landed: Landed) -> None:
        if step != self.step:
            return
        assert landed.chain == "evm"
        desk = self.desk
        # Blocks come only when mined here, so the depth is exact; what the backend sends
        # meanwhile waits in the mempool and goes into the next block.
        _evm(desk, "evm_setAutomine", False)
        try:
            while desk.w3.eth.block_number < landed.height + self.depth - 1:
                desk.mine_evm(1)
                desk.pump()
            old_head = int(desk.w3.eth.block_number)
            fork = landed.height - 1  # the last block both branches share
            assert old_head - fork == self.depth
            raws = []
            for number in range(fork + 1, old_head + 1):
                block = desk.w3.eth.get_block(number)
                for tx_hash in block["transactions"]:
                    raws.append(_evm(desk, "eth_getRawTransactionByHash", _hex(tx_hash)))
            # What the backend sent since the last block waits in the mempool too; it is
            # mined after the returning transactions (sent on top of them, by the same
            # lender, or answering what they did).
            pending = _pending_raw(desk)
            _evm(desk, "anvil_dropAllTransactions")
            _evm(desk, "anvil_rollback", self.depth)
            assert desk.w3.eth.block_number == fork
            desk.mine_evm(1)  # the new branch's first block came without them
            for raw in raws:  # back in the mempool, mined again in the next block
                _evm(desk, "eth_sendRawTransaction", raw)
            desk.mine_evm(1)
            for raw in pending:
                _evm(desk, "eth_sendRawTransaction", raw)
            desk.mine_evm(max(1, old_head + 1 - int(desk.w3.eth.block_number)))
            assert desk.w3.eth.block_number > old_head  # the longer branch
            for raw in raws:
                tx_hash = desk.w3.keccak(hexstr=raw)
                assert desk.w3.eth.get_transaction_receipt(tx_hash)["blockNumber"] == fork + 2
        finally:
            _evm(desk, "evm_setAutomine", True)
        self.done.append({"fork": fork, "replaced": self.depth, "transactions": len(raws)})
        desk.pump()


@dataclass
class BitcoinReorg:
    """At `step`, the last `depth` blocks (from the step's block on) are invalidated and a
    longer branch is mined; their transactions return to the mempool and are mined again."""

    desk: Desk
    step: str
    depth: int
    done: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, step: str, landed: Landed) -> None:
        if step != self.step:
            return
        assert landed.chain == "btc"
        desk = self.desk
        while desk.btc_height() < landed.height + self.depth - 1:
            desk.mine_btc(1)
            desk.pump()
        old_tip = desk.btc_height()
        assert old_tip - landed.height + 1 == self.depth
        desk.node.rpc("invalidateblock", desk.node.rpc("getblockhash", landed.height))
        assert desk.btc_height() == landed.height - 1
        back = set(desk.node.rpc("getrawmempool"))
        assert landed.tx in back, "the step's transaction must return to the mempool"
        desk.node.rpc("generateblock", desk.faucet, [])  # a first block without it
        desk.mine_btc(old_tip + 1 - desk.btc_height())  # the rest, with the mempool
        assert desk.node.rpc("getrawtransaction", landed.tx, True).get("blockhash")
        self.done.append({"fork": landed.height - 1, "replaced": self.depth})
        desk.pump()


def _pending_raw(desk: Desk) -> list[str]:
    pool = _evm(desk, "txpool_content")
    txs = [
        tx
        for section in ("pending", "queued")
        for by_nonce in (pool.get(section) or {}).values()
        for tx in by_nonce.values()
    ]
    txs.sort(key=lambda tx: (tx["from"], int(tx["nonce"], 16)))
    return [_evm(desk, "eth_getRawTransactionByHash", tx["hash"]) for tx in txs]


def _hex(value: Any) -> str:
    text = value.hex() if isinstance(value, bytes | bytearray) else str(value)
    return text if text.startswith("0x") else "0x" + text
