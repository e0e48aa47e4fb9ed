"""Late-cancellation fees, free of I/O.

Booking decides the fee when the customer cancels after the cut-off (the
catalogue's rule, shown to the customer before they confirm) and publishes it
with the cancellation. Payments collects it: from the card on file if there is
one, otherwise the fee is owed and the customer pays it in the app.
Operations may waive a fee nobody has paid. A fee is paid at most once.

    owed ──charge──> charging ──provider succeeded──> paid
     ^                  │
     └──declined────────┘
    owed ──operations──> waived
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from shared.errors import Conflict
from shared.events.types import Currency, MinorUnits
from shared.schema import Forbid
from shared.time import StoredTime


class FeeStatus(StrEnum):
    OWED = "owed"  # no card on file, or its charge was declined
    CHARGING = "charging"  # a charge is at the provider
    PAID = "paid"
    WAIVED = "waived"


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
    version: int = 0

    def charge(self) -> int:
        """Start a charge; returns its attempt number (part of its idempotency key)."""
        if self.status is not FeeStatus.OWED:
            raise Conflict(f"the cancellation fee is {self.status.value}: nothing to charge")
        self.status = FeeStatus.CHARGING
        self.attempts += 1
        return self.attempts

    def paid(self, reference: str, at: datetime) -> None:
        if self.status is not FeeStatus.CHARGING:
            raise Conflict(f"the cancellation fee is {self.status.value}, not being charged")
        self.status, self.reference, self.paid_at, self.failure = (
            FeeStatus.PAID,
            reference,
            at,
            "",
        )

    def declined(self, reason: str) -> None:
        if self.status is not FeeStatus.CHARGING:
            raise Conflict(f"the cancellation fee is {self.status.value}, not being charged")
        self.status, self.failure = FeeStatus.OWED, reason

    def waive(self, by: str, reason: str, at: datetime) -> None:
        """Operations forgive a fee nobody has paid. A charge under way must end first:
        it might succeed, and then the fee was paid, not waived."""
        if self.status is not FeeStatus.OWED:
            raise Conflict(f"the cancellation fee is {self.status.value}: it cannot be waived")
        self.status, self.waived_by, self.waiver_reason, self.waived_at = (
            FeeStatus.WAIVED,
            by,
            reason,
            at,
        )
