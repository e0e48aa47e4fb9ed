"""Late-cancellation fees, free of I/O.

Booking decides the fee when the customer cancels after the cut-off (the
catalogue's rule, shown to the customer before they confirm) and publishes it
with the cancellation. Payments collects it: from the card on file if there is
one, otherwise the fee is owed and the customer pays it in the app.
Operations may waive a fee nobody has paid. A fee is paid at most once.

A cancellation can cross the visit: booking accepted it while the technician
went on, and the customer signed the receipt. That signature accepted the work,
so the fee no longer stands and is withdrawn: waived if owed, refunded if paid,
and a charge under way is let finish and then waived or refunded.

    owed ──charge──> charging ──provider succeeded──> paid ──withdrawn──> refunded
     ^                  │                                                    │
     └──declined────────┘                       refund_declined <──provider refused
                                          operations repaid it another way ──> refunded
    owed ──operations, or withdrawn──> waived
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from services.payments.domain import Repayment
from shared.errors import Conflict
from shared.events.types import Currency, MinorUnits
from shared.schema import Forbid
from shared.time import StoredTime

PAYMENTS = "payments"  # who waived a fee, when nobody in operations had to


class FeeStatus(StrEnum):
    OWED = "owed"  # no card on file, or its charge was declined
    CHARGING = "charging"  # a charge is at the provider
    PAID = "paid"
    WAIVED = "waived"
    REFUNDED = "refunded"  # paid, then given back: the visit was performed and signed for
    # Paid, withdrawn, and the provider would not give it back: operations repay it by hand.
    REFUND_DECLINED = "refund_declined"


class FeeStep(StrEnum):
    """What a change of the fee asks payments to do next."""

    NONE = "none"  # nothing changed
    NOTED = "noted"  # withdrawn while a charge is under way: its outcome decides
    CHARGED = "charged"  # the charge went through; the fee stands
    OWED = "owed"  # the charge did not go through; the customer owes it
    WAIVED = "waived"
    REFUND = "refund"  # give the money back


class CancellationFee(Forbid):
    fee_id: str
    booking_id: str
    customer_id: str
    amount: MinorUnits
    currency: Currency
    reason: str  # the customer's reason for cancelling
    cancelled_at: StoredTime
    status: FeeStatus = FeeStatus.OWED
    attempts: int = 0  # charges started; each is its own provider operation
    failure: str = ""  # why the last charge did not go through
    reference: str | None = None  # the provider's, once paid
    paid_at: StoredTime | None = None
    waived_by: str | None = None
    waiver_reason: str | None = None
    waived_at: StoredTime | None = None
    withdrawn: str = ""  # why the fee no longer stands ("" while it does)
    refunded_at: StoredTime | None = None
    refund_failure: str = ""  # why the provider would not give it back
    refund_repaid: Repayment | None = None  # and how operations gave it back instead
    version: int = 0

    def seen_by(self, ops: bool) -> CancellationFee:
        """The customer is told a fee was waived, and why, not which staff member did it."""
        if ops:
            return self
        waived_by = "operations" if self.waived_by not in (None, PAYMENTS) else self.waived_by
        repaid = self.refund_repaid.seen_by(ops) if self.refund_repaid else None
        return self.model_copy(update={"waived_by": waived_by, "refund_repaid": repaid})

    def charge(self) -> int:
        """Start a charge; returns its attempt number (part of its idempotency key)."""
        if self.status is not FeeStatus.OWED:
            raise Conflict(f"the cancellation fee is {self.status.value}: nothing to charge")
        self.status = FeeStatus.CHARGING
        self.attempts += 1
        return self.attempts

    def paid(self, reference: str, at: datetime) -> FeeStep:
        self._must_be_charging()
        self.status = FeeStatus.PAID
        self.reference, self.paid_at, self.failure = reference, at, ""
        return self._refund(at) if self.withdrawn else FeeStep.CHARGED

    def declined(self, reason: str, by: str, at: datetime) -> FeeStep:
        """The charge did not go through: owed, or waived by `by` if withdrawn meanwhile."""
        self._must_be_charging()
        self.status, self.failure = FeeStatus.OWED, reason
        if self.withdrawn:
            self.waive(by, self.withdrawn, at)
            return FeeStep.WAIVED
        return FeeStep.OWED

    def waive(self, by: str, reason: str, at: datetime) -> None:
        """Operations forgive a fee nobody has paid. A charge under way must end first:
        it might succeed, and then the fee was paid, not waived."""
        if self.status is not FeeStatus.OWED:
            raise Conflict(f"the cancellation fee is {self.status.value}: it cannot be waived")
        self.status = FeeStatus.WAIVED
        self.waived_by, self.waiver_reason, self.waived_at = by, reason, at

    def withdraw(self, by: str, reason: str, at: datetime) -> FeeStep:
        """The fee no longer stands (the visit was performed and signed for): waive it if
        owed, refund it if paid; a charge under way is noted, and its outcome decides."""
        if self.withdrawn or self.status in (
            FeeStatus.WAIVED,
            FeeStatus.REFUNDED,
            FeeStatus.REFUND_DECLINED,
        ):
            return FeeStep.NONE
        self.withdrawn = reason
        if self.status is FeeStatus.OWED:
            self.waive(by, reason, at)
            return FeeStep.WAIVED
        if self.status is FeeStatus.PAID:
            return self._refund(at)
        return FeeStep.NOTED

    def refund_declined(self, reason: str) -> bool:
        """The provider refused to give the fee back; False if that was already known."""
        if self.status is not FeeStatus.REFUNDED:
            return False
        self.status, self.refund_failure = FeeStatus.REFUND_DECLINED, reason
        return True

    def repaid_by_hand(self, repayment: Repayment) -> None:
        """Operations gave back, another way, the fee the card would not take back."""
        if self.status is not FeeStatus.REFUND_DECLINED:
            raise Conflict(
                f"the cancellation fee is {self.status.value}: only a refund the card declined "
                "is repaid another way"
            )
        self.status, self.refund_repaid = FeeStatus.REFUNDED, repayment

    def _must_be_charging(self) -> None:
        if self.status is not FeeStatus.CHARGING:
            raise Conflict(f"the cancellation fee is {self.status.value}, not being charged")

    def _refund(self, at: datetime) -> FeeStep:
        self.status, self.refunded_at = FeeStatus.REFUNDED, at
        return FeeStep.REFUND
