// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title EtherSwap: the hash time lock that holds a loan's rBTC between two parties.
/// @notice Only the loan contract named at construction may lock, claim or refund. A swap is
/// keyed by keccak256(preimageHash, amount, claimAddress, refundAddress, timelock), so the
/// caller must present exactly the values it locked with. The refund address is always the
/// caller of `lock` (the loan contract), which forwards refunds to whoever is owed them.
/// A claim pays `claimAddress` (any time before a refund); a refund pays `refundAddress`
/// once the block number is past `timelock`.
contract EtherSwap {
    /// The only contract allowed to use this swap (the BtcCollateralLoan).
    address public immutable loanContract;

    /// Swap key => locked and not yet claimed or refunded.
    mapping(bytes32 => bool) public swaps;

    event Lockup(
        bytes32 indexed preimageHash,
        uint256 amount,
        address claimAddress,
        address indexed refundAddress,
        uint256 timelock
    );
    event Claim(bytes32 indexed preimageHash, bytes32 preimage);
    event Refund(bytes32 indexed preimageHash);

    constructor(address loanContract_) {
        require(loanContract_ != address(0), "EtherSwap: loan contract is the zero address");
        loanContract = loanContract_;
    }

    modifier onlyLoanContract() {
        require(msg.sender == loanContract, "EtherSwap: caller is not the loan contract");
        _;
    }

    function hashValues(
        bytes32 preimageHash,
        uint256 amount,
        address claimAddress,
        address refundAddress,
        uint256 timelock
    ) public pure returns (bytes32) {
        return keccak256(abi.encodePacked(preimageHash, amount, claimAddress, refundAddress, timelock));
    }

    function lock(bytes32 preimageHash, address claimAddress, uint256 timelock)
        external
        payable
        onlyLoanContract
    {
        require(msg.value > 0, "EtherSwap: nothing to lock");
        require(preimageHash != bytes32(0), "EtherSwap: empty preimage hash");
        require(claimAddress != address(0), "EtherSwap: claim address is the zero address");
        bytes32 key = hashValues(preimageHash, msg.value, claimAddress, msg.sender, timelock);
        require(!swaps[key], "EtherSwap: swap exists already");
        swaps[key] = true;
        emit Lockup(preimageHash, msg.value, claimAddress, msg.sender, timelock);
    }

    function claim(
        bytes32 preimage,
        uint256 amount,
        address claimAddress,
        address refundAddress,
        uint256 timelock
    ) external onlyLoanContract {
        bytes32 preimageHash = sha256(abi.encodePacked(preimage));
        bytes32 key = hashValues(preimageHash, amount, claimAddress, refundAddress, timelock);
        require(swaps[key], "EtherSwap: no such swap");
        delete swaps[key];
        emit Claim(preimageHash, preimage);
        _pay(claimAddress, amount);
    }

    function refund(
        bytes32 preimageHash,
        uint256 amount,
        address claimAddress,
        address refundAddress,
        uint256 timelock
    ) external onlyLoanContract {
        require(block.number > timelock, "EtherSwap: timelock not yet expired");
        bytes32 key = hashValues(preimageHash, amount, claimAddress, refundAddress, timelock);
        require(swaps[key], "EtherSwap: no such swap");
        delete swaps[key];
        emit Refund(preimageHash);
        _pay(refundAddress, amount);
    }

    function _pay(address to, uint256 amount) private {
        (bool sent,) = payable(to).call{value: amount}("");
        require(sent, "EtherSwap: transfer failed");
    }
}
