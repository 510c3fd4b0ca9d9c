// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {EtherSwap} from "./EtherSwap.sol";

/// @title SeedBtcCollateralLoan: the earlier prototype's loan contract semantics, flaws included.
/// @notice FOR TESTS ONLY. Written from the protocol's description of the contracts that desks
/// running the earlier prototype have deployed (same ABI and events as BtcCollateralLoan), so
/// the backend can be tested against what those desks run. It reproduces, on purpose:
///  - strict bounds: the borrower accepts an offer while block < offer + t_B and repays while
///    block < activation + D; the lender's remedies open after those blocks;
///  - every live loan reads the GLOBAL loanDuration (attemptRepayment and markAsDefaulted),
///    not the snapshot taken at request;
///  - attemptRepayment locks under any H_L the caller passes (not the stored one);
///  - extendLoanOffer overwrites both stored hashes with its arguments;
///  - withdrawLoanOffer refunds the amount into this contract, and acceptLoanRepayment pays the
///    lender the amount only: the bond (and the refund) stay here until emergencyWithdraw,
///    which takes the balance of every loan at once;
///  - withdrawRepaymentAttempt can never succeed (it demands an empty H_L, refunds under H_B);
///  - acceptLoanRepayment has no deadline;
///  - one loan per borrower until deleteCompletedLoan; loan ids start at 0;
///  - requestLoan takes any value at or above the processing fee.
/// Never deploy it for real loans: deploy BtcCollateralLoan.
contract SeedBtcCollateralLoan is Ownable {
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
    uint256 public loanInterestRate = 5; // never used by any function

    string public lenderBtcPubkey;
    EtherSwap public etherSwap;

    uint256 public loanDuration;
    uint256 public timelockLoanReq;
    uint256 public timelockBtcEscrow;
    uint256 public timelockRepaymentAccept;
    uint256 public timelockBtcCollateral;

    mapping(uint256 => Loan) public loans;
    mapping(uint256 => LoanParameters) public loanParameters;
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

    constructor(
        string memory lenderBtcPubkey_,
        uint256 loanDuration_,
        uint256 timelockLoanReq_,
        uint256 timelockBtcEscrow_,
        uint256 timelockRepaymentAccept_,
        uint256 timelockBtcCollateral_
    ) Ownable(msg.sender) {
        lenderBtcPubkey = lenderBtcPubkey_;
        emit LenderUpdated(msg.sender, lenderBtcPubkey_);
        _setParameters(
            loanDuration_, timelockLoanReq_, timelockBtcEscrow_, timelockRepaymentAccept_, timelockBtcCollateral_
        );
    }

    receive() external payable {}

    function setEtherSwapAddress(address etherSwapAddress) external onlyLender {
        require(address(etherSwap) == address(0), "EtherSwap address already set");
        etherSwap = EtherSwap(etherSwapAddress);
        emit EtherSwapAddressSet(etherSwapAddress);
    }

    function updateLenderBtcPubkey(string calldata btcPubkey) external onlyLender {
        lenderBtcPubkey = btcPubkey;
        emit LenderUpdated(msg.sender, btcPubkey);
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

    function requestLoan(
        uint256 amount,
        string calldata btcAddress,
        string calldata btcPubkey,
        bytes32 preimageHashBorrower,
        bytes32 txid_p2tr0,
        uint32 vout_p2tr0
    ) external payable {
        require(msg.value >= PROCESSING_FEE, "insufficient processing fee");
        require(amount >= MIN_LOAN_AMOUNT, "amount below minimum");
        require(bytes(btcAddress).length >= 62 && bytes(btcAddress).length <= 64, "invalid btc address");
        require(bytes(btcPubkey).length == 64, "invalid btc pubkey");
        require(loans[borrowerToLoanId[msg.sender]].borrowerAddr != msg.sender, "borrower has active loan");

        uint256 loanId = totalLoans;
        totalLoans += 1;
        Loan storage loan = loans[loanId];
        loan.borrowerAddr = msg.sender;
        loan.borrowerBtcPubkey = btcPubkey;
        loan.amount = amount;
        loan.status = LoanStatus.Requested;
        loan.preimageHashBorrower = preimageHashBorrower;
        loan.txid_p2tr0 = txid_p2tr0;
        loan.vout_p2tr0 = vout_p2tr0;
        loanParameters[loanId] =
            LoanParameters(loanInterestRate, PROCESSING_FEE, loanDuration, timelockLoanReq, timelockRepaymentAccept);
        borrowerToLoanId[msg.sender] = loanId;
        emit LoanRequested(loanId, msg.sender, amount, btcAddress);
    }

    function associateLenderPreimageHash(uint256 loanId, bytes32 preimageHashLender) external onlyLender {
        require(loans[loanId].status == LoanStatus.Requested, "loan not requested");
        loans[loanId].preimageHashLender = preimageHashLender;
        emit LenderPreimageHashAssociated(loanId, msg.sender, preimageHashLender);
    }

    function extendLoanOffer(uint256 loanId, bytes32 preimageHashBorrower, bytes32 preimageHashLender)
        external
        payable
        onlyLender
    {
        Loan storage loan = loans[loanId];
        require(loan.borrowerAddr != address(0), "loan does not exist");
        require(loan.status == LoanStatus.Requested, "loan not requested");
        uint256 bond = (loan.amount * LENDER_BOND_PERCENTAGE) / 100;
        require(msg.value == loan.amount + bond, "incorrect offer value");
        loan.preimageHashBorrower = preimageHashBorrower;
        loan.preimageHashLender = preimageHashLender;
        loan.bondAmount = bond;
        loan.offerBlockheight = block.number;
        loan.status = LoanStatus.Offered;
        etherSwap.lock{value: loan.amount}(
            preimageHashBorrower, loan.borrowerAddr, block.number + loanParameters[loanId].tl_borrower
        );
        emit LoanOffered(loanId, msg.sender, loan.amount, bond);
    }

    function acceptLoanOffer(uint256 loanId, bytes32 preimageBorrower) external {
        Loan storage loan = loans[loanId];
        require(loan.status == LoanStatus.Offered, "loan not offered");
        require(msg.sender == loan.borrowerAddr, "not the borrower");
        uint256 timelock = loan.offerBlockheight + loanParameters[loanId].tl_borrower;
        require(block.number < timelock, "offer expired");
        loan.status = LoanStatus.Active;
        loan.activationBlockheight = block.number;
        etherSwap.claim(preimageBorrower, loan.amount, loan.borrowerAddr, address(this), timelock);
        (bool sent,) = payable(loan.borrowerAddr).call{value: loanParameters[loanId].proc_fee}("");
        require(sent, "fee transfer failed");
        emit LoanActivated(loanId, msg.sender, preimageBorrower);
    }

    /// The refund lands in this contract; nothing is forwarded to the lender.
    function withdrawLoanOffer(uint256 loanId) external onlyLender {
        Loan storage loan = loans[loanId];
        require(loan.status == LoanStatus.Offered, "loan not offered");
        uint256 timelock = loan.offerBlockheight + loanParameters[loanId].tl_borrower;
        require(block.number > timelock, "offer still open");
        loan.status = LoanStatus.RefundedToLender;
        etherSwap.refund(loan.preimageHashBorrower, loan.amount, loan.borrowerAddr, address(this), timelock);
        emit LoanRefundedToLender(loanId, msg.sender);
    }

    /// Any hash is accepted and the global loanDuration is read.
    function attemptRepayment(uint256 loanId, bytes32 preimageHashLender) external payable {
        Loan storage loan = loans[loanId];
        require(loan.status == LoanStatus.Active, "loan not active");
        require(block.number < loan.activationBlockheight + loanDuration, "loan duration expired");
        require(msg.value == loan.amount, "incorrect repayment amount");
        loan.status = LoanStatus.RepaymentInProgress;
        loan.repaymentBlockheight = block.number;
        etherSwap.lock{value: msg.value}(
            preimageHashLender, address(this), block.number + loanParameters[loanId].tl_lender
        );
        emit RepaymentAttempted(loanId, msg.sender, msg.value);
    }

    /// Pays the lender the amount only; the bond stays in this contract.
    function acceptLoanRepayment(uint256 loanId, bytes32 preimageLender) external onlyLender {
        Loan storage loan = loans[loanId];
        require(loan.status == LoanStatus.RepaymentInProgress, "no repayment in progress");
        loan.status = LoanStatus.Repaid;
        etherSwap.claim(
            preimageLender,
            loan.amount,
            address(this),
            address(this),
            loan.repaymentBlockheight + loanParameters[loanId].tl_lender
        );
        (bool sent,) = payable(owner()).call{value: loan.amount}("");
        require(sent, "transfer failed");
        emit RepaymentAccepted(loanId, msg.sender, preimageLender);
    }

    /// Cannot succeed: every offered loan has a lender hash, and the refund key uses H_B.
    function withdrawRepaymentAttempt(uint256 loanId) external {
        Loan storage loan = loans[loanId];
        require(loan.status == LoanStatus.RepaymentInProgress, "no repayment in progress");
        require(msg.sender == loan.borrowerAddr, "not the borrower");
        uint256 timelock = loan.repaymentBlockheight + loanParameters[loanId].tl_lender;
        require(block.number > timelock, "lender may still accept");
        require(loan.preimageHashLender == bytes32(0), "lender preimage hash is set");
        loan.status = LoanStatus.RefundedToBorrower;
        etherSwap.refund(loan.preimageHashBorrower, loan.amount, address(this), address(this), timelock);
        (bool sent,) = payable(loan.borrowerAddr).call{value: loan.amount + loan.bondAmount}("");
        require(sent, "transfer failed");
        emit RepaymentRefundedToBorrowerWithBond(loanId, msg.sender, loan.bondAmount);
    }

    /// Reads the global loanDuration: raising it after activation postpones every default.
    function markAsDefaulted(uint256 loanId) external onlyLender {
        Loan storage loan = loans[loanId];
        require(loan.status == LoanStatus.Active, "loan not active");
        require(block.number > loan.activationBlockheight + loanDuration, "cannot mark defaulted yet");
        loan.status = LoanStatus.Defaulted;
        (bool sent,) = payable(owner()).call{value: loan.bondAmount}("");
        require(sent, "transfer failed");
        emit LoanDefaulted(loanId, msg.sender, loan.bondAmount);
    }

    function deleteCompletedLoan(uint256 loanId) external {
        Loan storage loan = loans[loanId];
        address borrower = loan.borrowerAddr;
        require(msg.sender == borrower || msg.sender == owner(), "not borrower or lender");
        LoanStatus status = loan.status;
        require(
            status == LoanStatus.RefundedToLender || status == LoanStatus.Repaid
                || status == LoanStatus.RefundedToBorrower || status == LoanStatus.Defaulted,
            "loan not completed"
        );
        delete loans[loanId];
        delete loanParameters[loanId];
        delete borrowerToLoanId[borrower];
        emit LoanDeleted(loanId, borrower);
    }

    /// Takes the contract's whole balance: every loan's bond and refunds at once.
    function emergencyWithdraw() external onlyLender {
        (bool sent,) = payable(owner()).call{value: address(this).balance}("");
        require(sent, "transfer failed");
    }

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
            "invalid parameters"
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
}
