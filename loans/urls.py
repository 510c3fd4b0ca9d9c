from django.urls import path

from loans import apis

urlpatterns = [
    path("parameters", apis.ParametersApi.as_view(), name="parameters"),
    path("escrow/quote", apis.EscrowQuoteApi.as_view(), name="escrow-quote"),
    path("loans/", apis.LoanListApi.as_view(), name="loan-list"),
    path("loans/<int:pk>/", apis.LoanDetailApi.as_view(), name="loan-detail"),
    path("loans/<int:pk>/collateral-tx", apis.CollateralTxApi.as_view(), name="collateral-tx"),
    path(
        "loans/<int:pk>/borrower-signature",
        apis.BorrowerSignatureApi.as_view(),
        name="borrower-signature",
    ),
    path("loans/<int:pk>/release-tx", apis.ReleaseTxApi.as_view(), name="release-tx"),
    path("loans/<int:pk>/exit-tx", apis.ExitTxApi.as_view(), name="exit-tx"),
]
