"""Receipt rules, free of I/O.

A receipt is built only from the items recorded at completion, at the prices
kept on the booking (the event carries them; nobody types a price). Then, in
this order: prepaid visits pay for the services they cover (at base price),
one coupon takes off what it is worth, stored value pays what it can, and the
rest is the amount due.

What the customer is shown and signs is the receipt's *content*; its hash is
the receipt hash the signing request must carry. Pricing is deterministic, so
re-pricing at signing time gives the same content unless something the price
depends on changed (a card drawn meanwhile, a coupon used): then the content,
and its hash, change and the customer must look again.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import Field, PrivateAttr

from services.payments.ledger import Holding, Unit
from services.payments.sealing import Seal, digest
from shared.errors import Conflict, NotFound, Unprocessable
from shared.events.payments import DisputedItem, DisputeReason, RepaidWay
from shared.events.types import Currency, MinorUnits, PricedLine
from shared.schema import Forbid
from shared.time import StoredTime


class ReceiptStatus(StrEnum):
    ISSUED = "issued"  # waiting for the customer's signature
    SEALED = "sealed"  # signed by the customer, sealed by the platform, payment under way
    SETTLED = "settled"  # the amount due is paid
    VOIDED = "voided"  # withdrawn unsigned: the booking had been cancelled before completion
    WRITTEN_OFF = "written_off"  # signed, never paid in full: operations gave the rest up


class ReceiptLine(Forbid):
    code: str
    name: str
    kind: str = "service"
    quantity: int
    unit_price: int
    surcharge: int = 0
    amount: int


class Discount(Forbid):
    # The coupon's reference (`coupon_reference`), not its id: a remedy's coupon id names
    # the complaint (a safety complaint's its kind too), and this receipt is sealed and read
    # by the next visit's technician and store. Receipts issued before kept the id itself.
    coupon_id: str = Field(description="The coupon's reference, as the customer's list shows it")
    description: str
    amount: int


class PrepaidDraw(Forbid):
    holding_id: str
    name: str
    unit: Unit
    units: int = Field(ge=1)
    amount: int = Field(ge=1, description="What these units pay for, in minor units")


class Coupon(Forbid):
    coupon_id: str
    customer_id: str
    currency: Currency
    amount: MinorUnits | None = None
    percent: int | None = Field(default=None, ge=1, le=100)
    reason: str = ""
    expires_at: datetime
    used_by: str | None = None  # the receipt that spent it
    version: int = 0

    def worth(self, on: int) -> int:
        value = self.amount if self.amount is not None else on * (self.percent or 0) // 100
        return min(value, on)


COUPON_REFERENCE = "cpn_"


def coupon_reference(coupon_id: str) -> str:
    """What a receipt names a coupon by: it says which of the customer's coupons was spent,
    and nothing of where that coupon came from."""
    return COUPON_REFERENCE + hashlib.sha256(coupon_id.encode()).hexdigest()[:24]


def spent_coupon(discount: Discount, coupons: Sequence[Coupon]) -> str | None:
    """The id of the coupon a receipt's discount spends (None: none of these coupons)."""
    # (A receipt issued before references named the coupon by its id.)
    old = not discount.coupon_id.startswith(COUPON_REFERENCE)
    return next(
        (
            c.coupon_id
            for c in coupons
            if discount.coupon_id == (c.coupon_id if old else coupon_reference(c.coupon_id))
        ),
        None,
    )


class SignatureMethod(StrEnum):
    DRAWN = "drawn"  # the SHA-256 of the signature drawn on the screen
    DEVICE_KEY = "device_key"  # an Ed25519 signature by a key held on the customer's device


class CustomerSignature(Forbid):
    method: SignatureMethod
    artefact: str = Field(description="Drawn: hex SHA-256 of the drawing. Device: signature")
    public_key: str | None = Field(default=None, description="Device key (base64url)")
    signed_at: StoredTime


class Payment(Forbid):
    """How the amount due was paid, and what went back."""

    method: str  # provider, cash
    amount: int
    reference: str
    at: datetime


class Repayment(Forbid):
    """Money a refund still owed (the card would not take it back, or it is cash to hand
    back), given back by operations: by transfer, in cash, or another way."""

    way: RepaidWay
    # The transfer's, or the cash receipt's, and who: operations' own (`seen_by`).
    reference: str | None
    by: str | None
    at: StoredTime
    # What it gave back for the whole refund: its parts' sum, or less on a receipt from
    # before refused money was kept promised (stores' settlements take off what it gave).
    # None: repaid before it was kept.
    amount: int | None = None

    def seen_by(self, ops: bool) -> Repayment:
        return self if ops else self.model_copy(update={"reference": None, "by": None})


class RefundPart(Forbid):
    to: str  # provider, cash, holding
    amount: int
    holding_id: str | None = None
    units: int | None = None  # for a holding
    # Why the provider refused to give this part back: the money is still the customer's,
    # owed by this refund until operations give it back another way (no other refund takes
    # its place: which one settled which would not be known), and operations are told.
    declined: str | None = None
    repaid: Repayment | None = None  # operations gave it back (another way) after all

    def seen_by(self, insider: bool, ops: bool) -> RefundPart:
        if self.declined is None and self.repaid is None:
            return self
        return self.model_copy(
            update={
                "declined": self.declined if insider or self.declined is None else "declined",
                "repaid": self.repaid.seen_by(ops) if self.repaid else None,
            }
        )

    @property
    def owed(self) -> bool:
        """Still the customer's money: the card would not take it back, or it is cash that
        somebody must hand back (nothing moves it by itself), and operations have not
        recorded giving it back."""
        return (self.declined is not None or self.to == "cash") and self.repaid is None

    @property
    def refused(self) -> bool:
        """The card would not take it back and nobody repaid it."""
        return self.declined is not None and self.repaid is None

    @property
    def given_back(self) -> int:
        return 0 if self.refused else self.amount


class Refund(Forbid):
    refund_id: str
    amount: int
    reason: str
    parts: list[RefundPart]
    at: datetime

    def seen_by(self, insider: bool, ops: bool) -> Refund:
        """Why money went back (often a complaint's resolution), and what the customer's bank
        said of their card, are the customer's and operations': the technician and the
        store see how much went back, and that a part was declined. How operations repaid
        it is theirs to know in full; everyone else sees the way and when."""
        parts = [part.seen_by(insider, ops) for part in self.parts]
        return self.model_copy(update={"reason": self.reason if insider else "", "parts": parts})

    def card_declined(self, reason: str) -> None:
        """The provider refused the card part: it counts as not given back."""
        for part in self.parts:
            if part.to == "provider":
                part.declined = reason

    @property
    def owed(self) -> int:
        """What the card would not take back, or is cash to hand back, not given yet."""
        return sum(part.amount for part in self.parts if part.owed)

    def repaid_by_hand(self, repayment: Repayment) -> int:
        """Operations gave back what the refund still owed: what they gave."""
        owed = self.owed
        if not owed:
            raise Conflict(
                f"refund {self.refund_id} owes nothing: no declined card part and no cash left "
                "to give back",
                field="refund_id",
            )
        for part in self.parts:
            if part.owed:
                part.repaid = repayment
        return owed


class GrantedRefund(Forbid):
    """A refund a complaint granted before the money came in: made once it has."""

    refund_id: str
    amount: int | None  # None: everything paid
    reason: str
    granted_at: datetime
    # Why it was told not made, once (operations wrote the money off): made all the same if
    # the write-off is taken back and paid.
    not_made: str | None = None

    def seen_by(self, insider: bool) -> GrantedRefund:
        return self if insider else self.model_copy(update={"reason": ""})


class RefundsWaiting(Forbid):
    """A booking's refunds a complaint granted before its visit's receipt exists (a complaint
    during the visit): handed to the receipt when it is issued. A cancellation without a
    receipt is kept too: a refund granted then (or waiting) is not made, nothing was paid."""

    booking_id: str
    refunds: list[GrantedRefund] = Field(default_factory=list)
    cancelled_at: datetime | None = None
    receipt_id: str | None = None  # handed over to it
    noted_at: datetime | None = None  # last changed: kept 180 days after
    version: int = 0


CONTENT_FIELDS = {
    "receipt_id",
    "booking_id",
    "customer_id",
    "technician_id",
    "store_id",
    "currency",
    "lines",
    "subtotal",
    "discounts",
    "prepaid",
    "amount_due",
    "issued_at",
    "revision",
}


class WriteOff(Forbid):
    """What operations gave up on a signed receipt nobody paid, and why (the why and the who
    are operations' own: `seen_by` leaves them out for everyone else)."""

    amount: int
    reason: str | None
    by: str | None
    at: StoredTime

    def seen_by(self, ops: bool) -> WriteOff:
        return self if ops else self.model_copy(update={"reason": None, "by": None})


class Reopening(Forbid):
    """A write-off operations took back, and why (the why and the who are theirs alone)."""

    write_off: WriteOff
    reason: str | None
    by: str | None
    at: StoredTime

    def seen_by(self, ops: bool) -> Reopening:
        if ops:
            return self
        return self.model_copy(
            update={"write_off": self.write_off.seen_by(ops), "reason": None, "by": None}
        )


class Dispute(Forbid):
    """Items the customer took off the unsigned receipt, from the revision they were shown."""

    shown_hash: str  # that revision's hash: the same dispute asked again changes nothing
    revision: int  # the revision it made
    items: list[DisputedItem]
    at: StoredTime


# What a reason may be said of: a product is not "done", a service is not "used".
DISPUTABLE = {
    DisputeReason.NOT_DONE: {"service"},
    DisputeReason.NOT_USED: {"product"},
    DisputeReason.FEWER: {"service", "product"},
}


class Receipt(Forbid):
    receipt_id: str
    booking_id: str
    customer_id: str
    technician_id: str
    store_id: str
    # Where the visit was (operations' margins by region); not part of what is signed. None:
    # completed before dispatch told it.
    region: str | None = None
    currency: Currency
    lines: list[ReceiptLine]
    subtotal: int
    discounts: list[Discount] = Field(default_factory=list)
    prepaid: list[PrepaidDraw] = Field(default_factory=list)
    amount_due: int
    issued_at: StoredTime
    revision: int = 1  # re-priced before signing (a card or coupon changed meanwhile)

    status: ReceiptStatus = ReceiptStatus.ISSUED
    signature: CustomerSignature | None = None
    seal: Seal | None = None
    chain_position: int | None = None  # its place in the store's chain, from 0
    payments: list[Payment] = Field(default_factory=list)
    refunds: list[Refund] = Field(default_factory=list)
    # Made at settlement (in full, each once); told not made if the rest is written off.
    refunds_granted: list[GrantedRefund] = Field(default_factory=list)
    voided_at: StoredTime | None = None
    void_reason: str | None = None
    reminders_sent: int = 0  # while signed and unpaid (payments.payment_overdue)
    write_off: WriteOff | None = None
    reopened: list[Reopening] = Field(default_factory=list)  # write-offs taken back
    disputes: list[Dispute] = Field(default_factory=list)  # items taken off before signing
    disputed_at: StoredTime | None = None  # the last of them: operations' list reads it
    version: int = 0
    # The ids of its settlement entries when it was read (storage's: a save writes only the
    # entries that are new since). None: not read from storage, every entry is written.
    _entries_read: set[str] | None = PrivateAttr(default=None)

    def content(self) -> dict[str, Any]:
        """What the customer is shown and signs (JSON types: canonical and hashable).

        What was taken off is part of it (the technician and the store read it sealed); a
        receipt nobody disputed reads, and hashes, as receipts always have."""
        content = self.model_dump(mode="json", include=CONTENT_FIELDS)
        if self.disputes:
            content["disputed"] = [
                item.model_dump(mode="json") for d in self.disputes for item in d.items
            ]
        return content

    @property
    def digest(self) -> str:
        return digest(self.content())

    def signed_document(self) -> dict[str, Any]:
        """What the platform seals: the content with the customer's signature."""
        if self.signature is None:
            raise Conflict("the receipt is not signed")
        return {**self.content(), "signature": self.signature.model_dump(mode="json")}

    def sealed_document(self) -> dict[str, Any]:
        """`{"receipt", "seal"}`: what anyone may verify, online or offline."""
        if self.seal is None:
            raise Conflict("the receipt is not sealed yet")
        return {"receipt": self.signed_document(), "seal": self.seal.model_dump(mode="json")}

    @property
    def signed(self) -> bool:
        """Signed by the customer and sealed: only then is anything drawn, charged or paid."""
        return self.status in {
            ReceiptStatus.SEALED,
            ReceiptStatus.SETTLED,
            ReceiptStatus.WRITTEN_OFF,
        }

    def void(self, reason: str, at: datetime) -> bool:
        """Withdraw an unsigned receipt; False if it was voided already.

        A signed receipt is never voided: the customer's signature accepted the work.
        """
        if self.status is ReceiptStatus.VOIDED:
            return False
        if self.signed:
            raise Conflict(f"receipt {self.receipt_id} is signed: it cannot be voided")
        self.status, self.voided_at, self.void_reason = ReceiptStatus.VOIDED, at, reason
        return True

    def dispute(
        self,
        shown_hash: str,
        asked: Sequence[tuple[str, int, DisputeReason]],
        at: datetime,
    ) -> Dispute | None:
        """Take what the customer says they did not get off the unsigned receipt: its next
        revision, priced again by `disputed`. None if this very dispute was made already.

        The customer's word stands: nothing is charged without their signature, and
        operations see every dispute by technician and store. Taking everything off is not a
        dispute but a visit that did not happen: a complaint, which operations look into.
        """
        if self.status is ReceiptStatus.VOIDED:
            raise Conflict(f"receipt {self.receipt_id} was withdrawn: {self.void_reason}")
        said = [(code, quantity, reason) for code, quantity, reason in asked]
        for earlier in self.disputes:  # in any order: each item is named once
            if earlier.shown_hash == shown_hash and sorted(said) == sorted(
                (i.code, i.quantity, i.reason) for i in earlier.items
            ):
                return None
        if self.signed:
            raise Conflict(
                f"receipt {self.receipt_id} is signed: the customer accepted it; "
                "a complaint about the visit is the way now"
            )
        if shown_hash != self.digest:
            raise Conflict(
                "the receipt hash does not match the current receipt: the customer disputed "
                f"something else (current revision {self.revision}, hash {self.digest})",
                field="receipt_hash",
            )
        lines = [line.model_copy() for line in self.lines]
        items: list[DisputedItem] = []
        for code, quantity, reason in said:
            named = [line for line in lines if line.code == code]
            if not named:
                raise Unprocessable(f"{code} is not on the receipt", field="items")
            kind = named[0].kind
            if kind not in DISPUTABLE[reason]:
                raise Unprocessable(
                    f"{code} is a {kind}: '{reason.value}' is not said of a {kind}", field="items"
                )
            held = sum(line.quantity for line in named)
            if quantity > held:
                raise Unprocessable(
                    f"the receipt has {held} of {code}, not {quantity} to take off", field="items"
                )
            amount, left = 0, quantity
            # Nobody can tell which unit was not delivered: the dearest come off first.
            for line in sorted(named, key=lambda n: n.unit_price + n.surcharge, reverse=True):
                taken = min(left, line.quantity)
                per_unit = line.unit_price + line.surcharge
                line.quantity -= taken
                line.amount = per_unit * line.quantity
                amount += per_unit * taken
                left -= taken
            items.append(
                DisputedItem(
                    code=code,
                    name=named[0].name,
                    kind=kind,
                    quantity=quantity,
                    amount=amount,
                    reason=reason,
                )
            )
        kept = [line for line in lines if line.quantity > 0]
        if not any(line.amount > 0 for line in kept):  # a free product left is not a visit
            raise Unprocessable(
                "nothing would be left to sign: if the visit did not happen, complain about "
                "a missed visit and operations will look into it",
                field="items",
            )
        self.lines = kept
        self.revision += 1
        made = Dispute(shown_hash=shown_hash, revision=self.revision, items=items, at=at)
        self.disputes.append(made)
        self.disputed_at = made.at
        return made

    def give_up(self, by: str, reason: str, at: datetime) -> WriteOff:
        """Write off what is still due: only on a signed receipt not paid in full, once a
        reminder has gone. (Whether a charge is under way is the caller's to check: it
        decides first.)"""
        if self.status is not ReceiptStatus.SEALED:
            issued = self.status is ReceiptStatus.ISSUED
            state = "not signed yet" if issued else self.status.value.replace("_", " ")
            raise Conflict(f"receipt {self.receipt_id} is {state}: nothing to write off")
        if self.reminders_sent < 1:
            # Cash may still be on its way from the door, or a new card a moment away:
            # whoever must act is reminded at least once before the money is given up.
            raise Conflict(
                f"receipt {self.receipt_id} has had no reminder yet: it is written off only"
                " once whoever must pay has been reminded"
            )
        self.write_off = WriteOff(amount=self.amount_due - self.paid, reason=reason, by=by, at=at)
        self.status = ReceiptStatus.WRITTEN_OFF
        return self.write_off

    def reopen(self, by: str, reason: str, at: datetime) -> Reopening:
        """Take a write-off back: what was given up is due again (the write-off is kept in
        `reopened`, with who took it back and why)."""
        if self.status is not ReceiptStatus.WRITTEN_OFF or self.write_off is None:
            state = self.status.value.replace("_", " ")
            raise Conflict(
                f"receipt {self.receipt_id} is {state}: only a written-off receipt is reopened"
            )
        reopening = Reopening(write_off=self.write_off, reason=reason, by=by, at=at)
        self.reopened.append(reopening)
        self.write_off = None
        self.status = ReceiptStatus.SEALED
        return reopening

    def repay(self, refund_id: str, repayment: Repayment) -> tuple[Refund, int]:
        """Operations gave back what a refund still owed (the card would not take it back,
        or it was cash to hand back): the refund, and how much they gave."""
        refund = next((r for r in self.refunds if r.refund_id == refund_id), None)
        if refund is None:
            raise NotFound(f"receipt {self.receipt_id} has no refund {refund_id}")
        amount = self.repayable(refund)
        if refund.owed and not amount:
            raise Conflict(
                f"what the card would not take back of {refund_id} went back since, by another "
                "refund: repaying it again would pay twice",
                field="refund_id",
            )
        refund.repaid_by_hand(repayment.model_copy(update={"amount": amount}))
        return refund, amount

    def repayable(self, refund: Refund) -> int:
        """What repaying `refund` gives back: its cash to hand back, and what the card would
        not take back, but no more of the card's money than other refunds left. Refused
        money is no longer refunded again; receipts from before may have refunded some of it
        again (or refused it twice): only the rest is owed."""
        cash = sum(p.amount for p in refund.parts if p.owed and not p.refused)
        refused = sum(p.amount for p in refund.parts if p.refused)
        given_back, _, _ = _refunded_so_far(self)
        left_on_card = max(0, self._card - given_back.get("provider", 0))
        return cash + min(refused, left_on_card)

    @property
    def _card(self) -> int:
        return sum(p.amount for p in self.payments if p.method == "provider")

    @property
    def owing(self) -> list[str]:
        """The refunds that still owe money operations may repay (declined, or cash)."""
        return [r.refund_id for r in self.refunds if r.owed and self.repayable(r)]

    @property
    def paid(self) -> int:
        return sum(p.amount for p in self.payments)

    @property
    def prepaid_amount(self) -> int:
        return sum(d.amount for d in self.prepaid)

    @property
    def refunded(self) -> int:
        """Given back, or promised by a refund that still owes it (cash to hand back, what
        the card would not take back): a refund made again of that money would pay twice.
        The card's share is never counted beyond what the card paid: receipts from before
        refused money was kept promised may have refunded it again."""
        parts = [p for r in self.refunds for p in r.parts]
        card = sum(p.amount for p in parts if p.to == "provider")
        return sum(p.amount for p in parts if p.to != "provider") + min(card, self._card)

    @property
    def refundable(self) -> int:
        """What came from the customer and no refund has given or promised back (coupons are
        not money paid)."""
        return max(0, self.paid + self.prepaid_amount - self.refunded)


def receipt_lines(performed: Sequence[PricedLine]) -> tuple[list[ReceiptLine], str]:
    if not performed:
        raise Unprocessable("a receipt needs at least one performed item")
    currencies = {line.currency for line in performed}
    if len(currencies) != 1:
        raise Unprocessable("performed items are priced in different currencies")
    lines = [
        ReceiptLine(
            code=p.code,
            name=p.name,
            kind=p.kind,
            quantity=p.quantity,
            unit_price=p.unit_price,
            surcharge=p.surcharge,
            amount=p.amount,
        )
        for p in performed
    ]
    return lines, currencies.pop()


def price(
    receipt: Receipt, holdings: Sequence[Holding], coupons: Sequence[Coupon], at: datetime
) -> Receipt:
    """The receipt's money part, from its lines and what the customer holds now."""
    usable = sorted(
        (
            h
            for h in holdings
            if h.customer_id == receipt.customer_id
            and h.store_id == receipt.store_id
            and h.currency == receipt.currency
            and h.spendable(at) > 0
        ),
        key=lambda h: (h.expires_at, h.holding_id),  # what expires first is spent first
    )
    left = {h.holding_id: h.spendable(at) for h in usable}
    draws: dict[str, PrepaidDraw] = {}

    def take(holding: Holding, units: int, amount: int) -> None:
        left[holding.holding_id] -= units
        d = draws.get(holding.holding_id)
        if d is None:
            draws[holding.holding_id] = PrepaidDraw(
                holding_id=holding.holding_id,
                name=holding.name,
                unit=holding.unit,
                units=units,
                amount=amount,
            )
        else:
            d.units += units
            d.amount += amount

    subtotal = sum(line.amount for line in receipt.lines)
    remaining = subtotal
    for line in receipt.lines:
        if line.kind != "service" or line.unit_price == 0:
            continue
        for _ in range(line.quantity):
            holding = next(
                (h for h in usable if h.covers_item(line.code) and left[h.holding_id] > 0), None
            )
            if holding is None:
                break
            take(holding, 1, line.unit_price)  # surcharges are not part of a prepaid visit
            remaining -= line.unit_price

    discounts: list[Discount] = []
    open_coupons = [
        c
        for c in coupons
        if c.customer_id == receipt.customer_id
        and c.currency == receipt.currency
        and c.used_by is None
        and at < c.expires_at
    ]
    if open_coupons and remaining > 0:
        best = max(open_coupons, key=lambda c: (c.worth(remaining), -c.expires_at.timestamp()))
        worth = best.worth(remaining)
        if worth > 0:
            discounts.append(
                Discount(
                    coupon_id=coupon_reference(best.coupon_id),
                    # Not the coupon's reason: a complaint's words would be sealed into a
                    # receipt the next visit's technician and store read.
                    description=f"coupon: {best.percent} % off" if best.percent else "coupon",
                    amount=worth,
                )
            )
            remaining -= worth

    for holding in usable:
        if holding.unit is Unit.MONEY and remaining > 0 and left[holding.holding_id] > 0:
            amount = min(remaining, left[holding.holding_id])
            take(holding, amount, amount)
            remaining -= amount

    return receipt.model_copy(
        update={
            "subtotal": subtotal,
            "discounts": discounts,
            "prepaid": list(draws.values()),
            "amount_due": remaining,
        }
    )


def issue(
    *,
    receipt_id: str,
    booking_id: str,
    customer_id: str,
    technician_id: str,
    store_id: str,
    region: str | None = None,
    performed: Sequence[PricedLine],
    holdings: Sequence[Holding],
    coupons: Sequence[Coupon],
    at: datetime,
) -> Receipt:
    lines, currency = receipt_lines(performed)
    draft = Receipt(
        receipt_id=receipt_id,
        booking_id=booking_id,
        customer_id=customer_id,
        technician_id=technician_id,
        store_id=store_id,
        region=region,
        currency=currency,
        lines=lines,
        subtotal=0,
        amount_due=0,
        issued_at=at,
    )
    return price(draft, holdings, coupons, at)


def reprice(
    receipt: Receipt, holdings: Sequence[Holding], coupons: Sequence[Coupon], at: datetime
) -> Receipt | None:
    """The receipt as it must read now, or None if it still reads as the customer saw it."""
    fresh = price(receipt, holdings, coupons, at)
    if fresh.content() == receipt.content():
        return None
    return fresh.model_copy(update={"revision": receipt.revision + 1})


def disputed(
    receipt: Receipt,
    *,
    shown_hash: str,
    asked: Sequence[tuple[str, int, DisputeReason]],
    holdings: Sequence[Holding],
    coupons: Sequence[Coupon],
    at: datetime,
) -> tuple[Receipt, Dispute] | None:
    """The receipt without what the customer disputed, priced again (a card's visit or a
    coupon kept for what is left); None if this very dispute was made already."""
    draft = receipt.model_copy(deep=True)
    made = draft.dispute(shown_hash, asked, at)
    if made is None:
        return None
    return price(draft, holdings, coupons, at), made


def allocate_refund(receipt: Receipt, amount: int) -> list[RefundPart]:
    """Where a refund goes: back the way the money came (provider, cash, then prepaid).

    A refund reaching a visit draw gives back whole visits, rounded up (be generous), so
    the parts may add up to a little more than asked, never more than was paid.
    """
    room = receipt.refundable
    if amount > room or not room:
        owing = receipt.owing
        why = (
            f"; the rest is owed by {', '.join(owing)} (the card would not take it back, or "
            "cash to hand back): record it repaid another way"
            if owing
            else ""
        )
        what = f"{amount} is more than" if room else "nothing is left of what"
        raise Conflict(
            f"{what} was paid and not yet refunded ({room}){why}",
            field="amount",
        )
    if amount <= 0:
        raise Unprocessable("a refund must be a positive amount", field="amount")
    refunded_to, back_amount, back_units = _refunded_so_far(receipt, promised=True)
    parts: list[RefundPart] = []
    left = amount
    for method in ("provider", "cash"):
        paid = sum(p.amount for p in receipt.payments if p.method == method)
        room = paid - refunded_to.get(method, 0)
        if left > 0 and room > 0:
            share = min(left, room)
            parts.append(RefundPart(to=method, amount=share))
            left -= share
    # Stored value before visits: a partial refund of money is exact, of a visit is not.
    for draw in sorted(receipt.prepaid, key=lambda d: d.unit is Unit.VISIT):
        amount_left = draw.amount - back_amount.get(draw.holding_id, 0)
        units_left = draw.units - back_units.get(draw.holding_id, 0)
        if left <= 0 or amount_left <= 0 or units_left <= 0:
            continue
        share = min(left, amount_left)
        if draw.unit is Unit.MONEY:
            units = share
        else:
            units = min(units_left, math.ceil(share * units_left / amount_left))
            if units == units_left:
                share = amount_left  # the last visit goes back whole
        parts.append(
            RefundPart(to="holding", amount=share, holding_id=draw.holding_id, units=units)
        )
        left -= share
    return parts


def _refunded_so_far(
    receipt: Receipt, *, promised: bool = False
) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """Refunded by method, and per holding the amount and units given back; `promised`:
    what refused refunds still owe too (no new refund may take that money)."""
    by_method: dict[str, int] = {}
    back_amount: dict[str, int] = {}
    back_units: dict[str, int] = {}
    for r in receipt.refunds:
        for part in r.parts:
            if part.refused and not promised:
                continue
            if part.to == "holding" and part.holding_id:
                back_amount[part.holding_id] = back_amount.get(part.holding_id, 0) + part.amount
                back_units[part.holding_id] = back_units.get(part.holding_id, 0) + (part.units or 0)
            else:
                by_method[part.to] = by_method.get(part.to, 0) + part.amount
    return by_method, back_amount, back_units
