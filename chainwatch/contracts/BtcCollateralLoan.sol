// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";
import {EtherSwap} from "./EtherSwap.sol";

/// @title BtcCollateralLoan: rBTC loans against Bitcoin collateral, one lender (the owner).
/// @notice The ABI is the seed system's (see docs PROTOCOL.md), so one backend decodes both.
/// Unlike the seed, this contract:
///  - refunds a refused repayment to the borrower together with the lender's bond;
///  - pays a withdrawn offer (amount + bond + the borrower's processing fee) back to the lender;
///  - locks a repayment only under the stored lender hash H_L;
///  - never lets extendLoanOffer change a hash already fixed;
///  - reads every deadline from the loan's own parameter snapshot;
///  - lets the lender accept a repayment only until repaymentBlockheight + t_L.
/// Where the money goes, by path (amount A, bond B = A * 10%, processing fee F):
///  - request: the borrower pays F to this contract.
///  - offer: the lender pays A + B; A is locked in EtherSwap for the borrower under H_B,
///    B stays here.
///  - accept offer: the borrower receives A (EtherSwap claim) + F.
///  - withdraw offer (borrower never accepted): the lender receives A + B + F.
///  - repay: the payer locks A in EtherSwap under H_L, claimable by this contract.
///  - accept repayment: the lender receives A + B.
///  - withdraw refused repayment: the borrower receives A + B.
///  - default: the lender receives B (and sweeps the Bitcoin collateral).
/// Deadlines are inclusive for the party that must act: the borrower may accept an offer up
/// to block offer + t_B, repay up to activation + D; the lender may accept a repayment up to
/// repayment + t_L. The other side's remedy opens the block after.
contract BtcCollateralLoan is Ownable, ReentrancyGuard {
    enum LoanStatus {
        Requested,
        Offered,
        Active,
        RefundedToLender,
        RepaymentInProgress,
        Repaid,
        RefundedToBorrower,
        Defaulted
    }

    struct Loan {
        address borrowerAddr;
        string borrowerBtcPubkey;
        uint256 amount;
        uint256 bondAmount;
        LoanStatus status;
        bytes32 preimageHashBorrower;
        bytes32 preimageHashLender;
        bytes32 txid_p2tr0;
        uint32 vout_p2tr0;
        uint256 offerBlockheight;
        uint256 activationBlockheight;
        uint256 repaymentBlockheight;
    }

    /// Snapshotted when a loan is requested; a live loan never reads the global parameters.
    struct LoanParameters {
        uint256 int_rate;
        uint256 proc_fee;
        uint256 duration;
        uint256 tl_borrower;
        uint256 tl_lender;
    }

    uint256 public constant PROCESSING_FEE = 0.001 ether;
    uint256 public constant MIN_LOAN_AMOUNT = 0.005 ether;
    uint256 public constant LENDER_BOND_PERCENTAGE = 10;
    uint256 public constant ORIGIN_FEE_PERCENTAGE = 1;
    /// No interest is charged on the EVM side (the lender earns the Bitcoin origination fee);
    /// kept for ABI compatibility with the seed and snapshotted as int_rate.
    uint256 public constant loanInterestRate = 0;

    string public lenderBtcPubkey;
    EtherSwap public etherSwap;

    uint256 public loanDuration; // D, EVM blocks
    uint256 public timelockLoanReq; // t_B, EVM blocks
    uint256 public timelockBtcEscrow; // t_0, EVM blocks (the backend converts to Bitcoin blocks)
    uint256 public timelockRepaymentAccept; // t_L, EVM blocks
    uint256 public timelockBtcCollateral; // t_1, EVM blocks

    mapping(uint256 => Loan) public loans;
    mapping(uint256 => LoanParameters) public loanParameters;
    /// The borrower's latest loan id; 0 means none (loan ids start at 1).
    mapping(address => uint256) public borrowerToLoanId;
    uint256 private totalLoans;

    event LenderUpdated(address indexed lender, string btcPubkey);
    event LoanRequested(uint256 indexed loanId, address indexed borrower, uint256 amount, string btcAddress);
    event LenderPreimageHashAssociated(uint256 indexed loanId, address indexed lender, bytes32 preimageHashLender);
    event LoanOffered(uint256 indexed loanId, address indexed lender, uint256 amount, uint256 bondAmount);
    event LoanActivated(uint256 indexed loanId, address indexed borrower, bytes32 preimageBorrower);
    event LoanRefundedToLender(uint256 indexed loanId, address indexed lender);
    event RepaymentAttempted(uint256 indexed loanId, address indexed borrower, uint256 amount);
    event RepaymentAccepted(uint256 indexed loanId, address indexed lender, bytes32 preimageLender);
    event RepaymentRefundedToBorrowerWithBond(uint256 indexed loanId, address indexed borrower, uint256 bondAmount);
    event ParametersUpdated(
        uint256 loanDuration,
        uint256 timelockLoanReq,
        uint256 timelockBtcEscrow,
        uint256 timelockRepaymentAccept,
        uint256 timelockBtcCollateral
    );
    event LoanDefaulted(uint256 indexed loanId, address indexed lender, uint256 bondAmount);
    event LoanDeleted(uint256 indexed loanId, address indexed borrower);
    event EtherSwapAddressSet(address indexed etherSwapAddress);

    modifier onlyLender() {
        require(msg.sender == owner(), "caller is not the lender");
        _;
    }

    modifier loanExists(uint256 loanId) {
        require(loans[loanId].borrowerAddr != address(0), "loan does not exist");
        _;
    }

    modifier inStatus(uint256 loanId, LoanStatus expected) {
        if (loans[loanId].status != expected) revert(_statusError(expected));
        _;
    }

    constructor(
        string memory lenderBtcPubkey_,
        uint256 loanDuration_,
        uint256 timelockLoanReq_,
        uint256 timelockBtcEscrow_,
        uint256 timelockRepaymentAccept_,
        uint256 timelockBtcCollateral_
    ) Ownable(msg.sender) {
        _setLenderBtcPubkey(lenderBtcPubkey_);
        _setParameters(
            loanDuration_, timelockLoanReq_, timelockBtcEscrow_, timelockRepaymentAccept_, timelockBtcCollateral_
        );
    }

    /// Only EtherSwap pays this contract (claims and refunds routed through us).
    receive() external payable {
        require(msg.sender == address(etherSwap), "only EtherSwap pays this contract");
    }

    // --- Lender administration ----------------------------------------------------------

    function setEtherSwapAddress(address etherSwapAddress) external onlyLender {
        require(address(etherSwap) == address(0), "EtherSwap address already set");
        require(etherSwapAddress.code.length > 0, "EtherSwap address has no code");
        require(
            EtherSwap(etherSwapAddress).loanContract() == address(this), "EtherSwap serves another loan contract"
        );
        etherSwap = EtherSwap(etherSwapAddress);
        emit EtherSwapAddressSet(etherSwapAddress);
    }

    function updateLenderBtcPubkey(string calldata btcPubkey) external onlyLender {
        _setLenderBtcPubkey(btcPubkey);
    }

    function updateParameters(
        uint256 loanDuration_,
        uint256 timelockLoanReq_,
        uint256 timelockBtcEscrow_,
        uint256 timelockRepaymentAccept_,
        uint256 timelockBtcCollateral_
    ) external onlyLender {
        _setParameters(
            loanDuration_, timelockLoanReq_, timelockBtcEscrow_, timelockRepaymentAccept_, timelockBtcCollateral_
        );
    }

    /// Renouncing would send every later payment to the lender to the zero address.
    function renounceOwnership() public override onlyOwner {
        revert("renouncing ownership is disabled");
    }

    // --- Loan lifecycle -------------------------------------------------------------------

    function requestLoan(
        uint256 amount,
        string calldata btcAddress,
        string calldata btcPubkey,
        bytes32 preimageHashBorrower,
        bytes32 txid_p2tr0,
        uint32 vout_p2tr0
    ) external payable nonReentrant {
        require(msg.value == PROCESSING_FEE, "value must equal the processing fee");
        require(amount >= MIN_LOAN_AMOUNT, "amount below the minimum");
        uint256 addressLength = bytes(btcAddress).length;
        require(addressLength >= 62 && addressLength <= 64, "btcAddress must be 62 to 64 characters");
        require(bytes(btcPubkey).length == 64, "btcPubkey must be 64 characters");
        require(preimageHashBorrower != bytes32(0), "empty borrower preimage hash");
        uint256 openLoanId = borrowerToLoanId[msg.sender];
        require(openLoanId == 0 || _isTerminal(loans[openLoanId].status), "borrower has an open loan");

        totalLoans += 1;
        uint256 loanId = totalLoans;
        Loan storage loan = loans[loanId];
        loan.borrowerAddr = msg.sender;
        loan.borrowerBtcPubkey = btcPubkey;
        loan.amount = amount;
        loan.status = LoanStatus.Requested;
        loan.preimageHashBorrower = preimageHashBorrower;
        loan.txid_p2tr0 = txid_p2tr0;
        loan.vout_p2tr0 = vout_p2tr0;
        loanParameters[loanId] = LoanParameters({
            int_rate: loanInterestRate,
            proc_fee: PROCESSING_FEE,
            duration: loanDuration,
            tl_borrower: timelockLoanReq,
            tl_lender: timelockRepaymentAccept
        });
        borrowerToLoanId[msg.sender] = loanId;
        emit LoanRequested(loanId, msg.sender, amount, btcAddress);
    }

    /// Fixes H_L once; the borrower pre-signs the collateral transaction against it.
    function associateLenderPreimageHash(uint256 loanId, bytes32 preimageHashLender)
        external
        onlyLender
        loanExists(loanId)
        inStatus(loanId, LoanStatus.Requested)
    {
        require(preimageHashLender != bytes32(0), "empty lender preimage hash");
        require(loans[loanId].preimageHashLender == bytes32(0), "lender preimage hash already set");
        loans[loanId].preimageHashLender = preimageHashLender;
        emit LenderPreimageHashAssociated(loanId, msg.sender, preimageHashLender);
    }

    /// value = amount + bond. H_B must be the borrower's; H_L must be the one already fixed,
    /// or is fixed here (with its LenderPreimageHashAssociated event) when none was.
    function extendLoanOffer(uint256 loanId, bytes32 preimageHashBorrower, bytes32 preimageHashLender)
        external
        payable
        onlyLender
        nonReentrant
        loanExists(loanId)
        inStatus(loanId, LoanStatus.Requested)
    {
        require(address(etherSwap) != address(0), "EtherSwap address not set");
        Loan storage loan = loans[loanId];
        require(preimageHashBorrower == loan.preimageHashBorrower, "borrower preimage hash mismatch");
        require(preimageHashLender != bytes32(0), "empty lender preimage hash");
        if (loan.preimageHashLender == bytes32(0)) {
            loan.preimageHashLender = preimageHashLender;
            emit LenderPreimageHashAssociated(loanId, msg.sender, preimageHashLender);
        } else {
            require(preimageHashLender == loan.preimageHashLender, "lender preimage hash mismatch");
        }
        uint256 bond = (loan.amount * LENDER_BOND_PERCENTAGE) / 100;
        require(msg.value == loan.amount + bond, "value must equal amount plus bond");

        loan.bondAmount = bond;
        loan.offerBlockheight = block.number;
        loan.status = LoanStatus.Offered;
        emit LoanOffered(loanId, msg.sender, loan.amount, bond);
        etherSwap.lock{value: loan.amount}(loan.preimageHashBorrower, loan.borrowerAddr, _offerDeadline(loanId));
    }

    /// Reveals P_B: the lender needs it to complete the Bitcoin collateral transaction.
    function acceptLoanOffer(uint256 loanId, bytes32 preimageBorrower)
        external
        nonReentrant
        loanExists(loanId)
        inStatus(loanId, LoanStatus.Offered)
    {
        Loan storage loan = loans[loanId];
        require(msg.sender == loan.borrowerAddr, "caller is not the borrower");
        require(block.number <= _offerDeadline(loanId), "offer has expired");
        require(sha256(abi.encodePacked(preimageBorrower)) == loan.preimageHashBorrower, "wrong borrower preimage");

        loan.status = LoanStatus.Active;
        loan.activationBlockheight = block.number;
        emit LoanActivated(loanId, msg.sender, preimageBorrower);
        etherSwap.claim(preimageBorrower, loan.amount, loan.borrowerAddr, address(this), _offerDeadline(loanId));
        _pay(loan.borrowerAddr, loanParameters[loanId].proc_fee);
    }

    function withdrawLoanOffer(uint256 loanId)
        external
        onlyLender
        nonReentrant
        loanExists(loanId)
        inStatus(loanId, LoanStatus.Offered)
    {
        require(block.number > _offerDeadline(loanId), "offer is still open to the borrower");
        Loan storage loan = loans[loanId];
        loan.status = LoanStatus.RefundedToLender;
        emit LoanRefundedToLender(loanId, msg.sender);
        etherSwap.refund(
            loan.preimageHashBorrower, loan.amount, loan.borrowerAddr, address(this), _offerDeadline(loanId)
        );
        _pay(owner(), loan.amount + loan.bondAmount + loanParameters[loanId].proc_fee);
    }

    /// Anyone may repay; value = amount, locked under the stored H_L for this contract to claim.
    function attemptRepayment(uint256 loanId, bytes32 preimageHashLender)
        external
        payable
        nonReentrant
        loanExists(loanId)
        inStatus(loanId, LoanStatus.Active)
    {
        Loan storage loan = loans[loanId];
        require(block.number <= _repaymentDeadline(loanId), "loan term is over");
        require(preimageHashLender == loan.preimageHashLender, "lender preimage hash mismatch");
        require(msg.value == loan.amount, "value must equal the loan amount");

        loan.status = LoanStatus.RepaymentInProgress;
        loan.repaymentBlockheight = block.number;
        emit RepaymentAttempted(loanId, msg.sender, msg.value);
        etherSwap.lock{value: msg.value}(loan.preimageHashLender, address(this), _acceptanceDeadline(loanId));
    }

    /// Reveals P_L: the borrower needs it to release the Bitcoin collateral.
    function acceptLoanRepayment(uint256 loanId, bytes32 preimageLender)
        external
        onlyLender
        nonReentrant
        loanExists(loanId)
        inStatus(loanId, LoanStatus.RepaymentInProgress)
    {
        Loan storage loan = loans[loanId];
        require(block.number <= _acceptanceDeadline(loanId), "repayment acceptance has expired");
        require(sha256(abi.encodePacked(preimageLender)) == loan.preimageHashLender, "wrong lender preimage");

        loan.status = LoanStatus.Repaid;
        emit RepaymentAccepted(loanId, msg.sender, preimageLender);
        etherSwap.claim(preimageLender, loan.amount, address(this), address(this), _acceptanceDeadline(loanId));
        _pay(owner(), loan.amount + loan.bondAmount);
    }

    /// The lender let t_L pass: the borrower takes the repayment back with the lender's bond.
    function withdrawRepaymentAttempt(uint256 loanId)
        external
        nonReentrant
        loanExists(loanId)
        inStatus(loanId, LoanStatus.RepaymentInProgress)
    {
        Loan storage loan = loans[loanId];
        require(msg.sender == loan.borrowerAddr, "caller is not the borrower");
        require(block.number > _acceptanceDeadline(loanId), "lender may still accept the repayment");

        loan.status = LoanStatus.RefundedToBorrower;
        emit RepaymentRefundedToBorrowerWithBond(loanId, msg.sender, loan.bondAmount);
        etherSwap.refund(
            loan.preimageHashLender, loan.amount, address(this), address(this), _acceptanceDeadline(loanId)
        );
        _pay(loan.borrowerAddr, loan.amount + loan.bondAmount);
    }

    /// The term passed unpaid: the lender takes its bond back (and the Bitcoin collateral).
    function markAsDefaulted(uint256 loanId)
        external
        onlyLender
        nonReentrant
        loanExists(loanId)
        inStatus(loanId, LoanStatus.Active)
    {
        require(block.number > _repaymentDeadline(loanId), "loan term is not over");
        Loan storage loan = loans[loanId];
        loan.status = LoanStatus.Defaulted;
        emit LoanDefaulted(loanId, msg.sender, loan.bondAmount);
        _pay(owner(), loan.bondAmount);
    }

    function deleteCompletedLoan(uint256 loanId) external loanExists(loanId) {
        Loan storage loan = loans[loanId];
        address borrower = loan.borrowerAddr;
        require(msg.sender == borrower || msg.sender == owner(), "caller is neither borrower nor lender");
        require(_isTerminal(loan.status), "loan is not completed");
        if (borrowerToLoanId[borrower] == loanId) {
            delete borrowerToLoanId[borrower];
        }
        delete loans[loanId];
        delete loanParameters[loanId];
        emit LoanDeleted(loanId, borrower);
    }

    // --- Views ----------------------------------------------------------------------------

    function getLoan(uint256 loanId) external view returns (Loan memory) {
        return loans[loanId];
    }

    function getLoanParameters(uint256 loanId) external view returns (LoanParameters memory) {
        return loanParameters[loanId];
    }

    function getTotalLoans() external view returns (uint256) {
        return totalLoans;
    }

    function getLoanIdByBorrower(address borrower) external view returns (uint256) {
        return borrowerToLoanId[borrower];
    }

    // --- Internals ------------------------------------------------------------------------

    function _setLenderBtcPubkey(string memory btcPubkey) private {
        require(bytes(btcPubkey).length == 64, "btcPubkey must be 64 characters");
        lenderBtcPubkey = btcPubkey;
        emit LenderUpdated(owner(), btcPubkey);
    }

    function _setParameters(
        uint256 loanDuration_,
        uint256 timelockLoanReq_,
        uint256 timelockBtcEscrow_,
        uint256 timelockRepaymentAccept_,
        uint256 timelockBtcCollateral_
    ) private {
        require(
            loanDuration_ > 0 && timelockLoanReq_ > 0 && timelockBtcEscrow_ > 0 && timelockRepaymentAccept_ > 0
                && timelockBtcCollateral_ > 0,
            "parameters must be positive"
        );
        require(timelockBtcEscrow_ > timelockLoanReq_, "t_0 must exceed t_B");
        require(timelockBtcCollateral_ > timelockRepaymentAccept_ + loanDuration_, "t_1 must exceed t_L + D");
        loanDuration = loanDuration_;
        timelockLoanReq = timelockLoanReq_;
        timelockBtcEscrow = timelockBtcEscrow_;
        timelockRepaymentAccept = timelockRepaymentAccept_;
        timelockBtcCollateral = timelockBtcCollateral_;
        emit ParametersUpdated(
            loanDuration_, timelockLoanReq_, timelockBtcEscrow_, timelockRepaymentAccept_, timelockBtcCollateral_
        );
    }

    function _offerDeadline(uint256 loanId) private view returns (uint256) {
        return loans[loanId].offerBlockheight + loanParameters[loanId].tl_borrower;
    }

    function _repaymentDeadline(uint256 loanId) private view returns (uint256) {
        return loans[loanId].activationBlockheight + loanParameters[loanId].duration;
    }

    function _acceptanceDeadline(uint256 loanId) private view returns (uint256) {
        return loans[loanId].repaymentBlockheight + loanParameters[loanId].tl_lender;
    }

    function _isTerminal(LoanStatus status) private pure returns (bool) {
        return status == LoanStatus.RefundedToLender || status == LoanStatus.Repaid
            || status == LoanStatus.RefundedToBorrower || status == LoanStatus.Defaulted;
    }

    function _statusError(LoanStatus expected) private pure returns (string memory) {
        if (expected == LoanStatus.Requested) return "loan is not in status Requested";
        if (expected == LoanStatus.Offered) return "loan is not in status Offered";
        if (expected == LoanStatus.Active) return "loan is not in status Active";
        return "loan is not in status RepaymentInProgress";
    }

    function _pay(address to, uint256 amount) private {
        (bool sent,) = payable(to).call{value: amount}("");
        require(sent, "transfer failed");
    }
}
