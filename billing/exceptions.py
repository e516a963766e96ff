"""Billing's domain errors. ``marketplace.api.errors`` maps them to HTTP 402."""


class BillingError(Exception):
    code = "billing_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InsufficientCredits(BillingError):
    code = "insufficient_credits"


class KeyBudgetExceeded(BillingError):
    code = "key_budget_exceeded"
