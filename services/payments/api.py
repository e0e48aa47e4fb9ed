"""Payments' HTTP API: receipts (sign, seal, verify, pay, refund), prepaid plans and holdings,
coupons, late-cancellation fees, sealing keys, and the provider's webhook.

Who may see what: a receipt is its customer's, its technician's, its store's and
operations'; anybody else gets 403 (404 where knowing it exists would leak).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response, status
from pydantic import Field, StringConstraints, ValidationError, model_validator

from services.payments import commands
from services.payments.domain import (
    Coupon,
    CustomerSignature,
    Dispute,
    Receipt,
    ReceiptStatus,
    Refund,
    Repayment,
    coupon_reference,
)
from services.payments.fees import CancellationFee, FeeStatus
from services.payments.ledger import Holding, Plan, PlanKind
from services.payments.margins import MarginBy, MarginOrder, Margins
from services.payments.provider import (
    SIGNATURE_HEADER,
    ProviderResult,
    ProviderStatus,
    webhook_is_authentic,
    webhook_secret,
)
from services.payments.sealing import verify
from services.payments.settlements import (
    Entered,
    Statement,
    StatementStatus,
    week_of,
    week_start,
)
from services.payments.storage import (
    CancellationFees,
    Coupons,
    Holdings,
    Ledger,
    Plans,
    ProviderOp,
    ProviderOps,
    Receipts,
    SealingKeys,
    Settlements,
    Wallets,
)
from shared.auth import Actor, ActorDep, Role
from shared.errors import Conflict, Forbidden, NotFound, Unauthenticated, Unprocessable
from shared.events.payments import DisputeReason, RepaidWay
from shared.events.reviews import REMEDY_REFUND
from shared.events.types import WEEK_PATTERN, Amount, Currency, Sum
from shared.locks import KeyedLocks
from shared.mongo import Document, put_owned
from shared.outbox import Transaction
from shared.schema import PATH_ID_MAX, Forbid, PathId, idempotency_key
from shared.service import Runtime, RuntimeDep
from shared.time import utcnow

router = APIRouter()
SEALING = KeyedLocks()  # per store: see shared/locks.py

IdempotencyKey = Annotated[str, idempotency_key("a second sale or coupon")]
# A refund's key is its id, named again in a path to record it repaid.
RefundKey = Annotated[str, idempotency_key("a second refund", max_length=PATH_ID_MAX)]
# Refunds made before keys were held to that were named by keys of up to 128 characters.
RefundId = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")]


def may_read(actor: Actor, receipt: Receipt) -> bool:
    return (
        actor.is_ops
        or (actor.role is Role.CUSTOMER and actor.subject == receipt.customer_id)
        or (actor.role is Role.TECHNICIAN and actor.subject == receipt.technician_id)
        or (actor.role is Role.STORE and actor.store_id == receipt.store_id)
    )


async def readable(runtime: RuntimeDep, actor: Actor, receipt_id: str) -> Receipt:
    receipt = await Receipts(runtime.db).get(receipt_id)
    if receipt is None:
        raise NotFound(f"receipt {receipt_id} does not exist")
    if not may_read(actor, receipt):
        raise Forbidden("this receipt is not yours")
    return receipt


async def customers_own(runtime: Runtime, actor: Actor, receipt_id: str, does: str) -> Receipt:
    """The receipt, for what only its booking's customer does to it (signs, disputes)."""
    receipt = await readable(runtime, actor, receipt_id)
    if actor.role is not Role.CUSTOMER or actor.subject != receipt.customer_id:
        raise Forbidden(f"only the booking's customer {does} its receipt")
    return receipt


class ReceiptView(Receipt):
    """A receipt with the hash the customer's signature must name."""

    content_hash: str

    @classmethod
    def of(cls, receipt: Receipt, actor: Actor) -> ReceiptView:
        view = cls(**receipt.model_dump(), content_hash=receipt.digest)
        if view.write_off is not None:
            view.write_off = view.write_off.seen_by(actor.is_ops)
        view.reopened = [r.seen_by(actor.is_ops) for r in view.reopened]
        insider = actor.is_ops or actor.role is Role.CUSTOMER
        view.refunds = [r.seen_by(insider, actor.is_ops) for r in view.refunds]
        view.refunds_granted = [g.seen_by(insider) for g in view.refunds_granted]
        if not insider:  # the provider's charge reference: the customer's and operations'
            view.payments = [
                p.model_copy(update={"reference": ""}) if p.method == "provider" else p
                for p in view.payments
            ]
        return view


# ------------------------------------------------------------------- receipts --


@router.get("/receipts", tags=["receipts"], summary="The receipt of a booking")
async def receipt_for_booking(
    runtime: RuntimeDep,
    actor: ActorDep,
    booking_id: Annotated[str, Query(min_length=1, max_length=64)],
) -> ReceiptView:
    receipt = await Receipts(runtime.db).by_booking(booking_id)
    if receipt is None or not may_read(actor, receipt):
        raise NotFound(f"no receipt for booking {booking_id} yet", field="booking_id")
    return await as_now(runtime, receipt, actor)


@router.get("/receipts/{receipt_id}", tags=["receipts"], summary="A receipt, priced as it is now")
async def get_receipt(receipt_id: PathId, runtime: RuntimeDep, actor: ActorDep) -> ReceiptView:
    return await as_now(runtime, await readable(runtime, actor, receipt_id), actor)


async def as_now(runtime: Runtime, receipt: Receipt, actor: Actor) -> ReceiptView:
    return ReceiptView.of(await priced_now(runtime, receipt), actor)


async def priced_now(runtime: Runtime, receipt: Receipt) -> Receipt:
    """Until signed, the receipt reads as the customer's cards and coupons are now. Looking
    costs reads only; the new revision is written when it does read differently."""
    if await commands.repriced(runtime.db, receipt) is None:
        return receipt
    fresh = await runtime.uow.run(lambda tx: commands.reprice_if_changed(tx, receipt.receipt_id))
    return fresh or receipt


class SignIn(Forbid):
    receipt_hash: str = Field(
        pattern=r"^[0-9a-f]{64}$", description="content_hash of the receipt the customer saw"
    )
    signature: CustomerSignature

    @model_validator(mode="after")
    def artefact_matches_method(self) -> SignIn:
        s = self.signature
        if s.method.value == "drawn" and not _is_hex64(s.artefact):
            raise ValueError("a drawn signature's artefact is the hex SHA-256 of the drawing")
        if s.method.value == "device_key" and not s.public_key:
            raise ValueError("a device signature needs the device's public key")
        if len(s.artefact) > 200 or len(s.public_key or "") > 100:
            raise ValueError("the signature artefact is too long")
        return self


def _is_hex64(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


@router.post(
    "/receipts/{receipt_id}/sign",
    tags=["receipts"],
    summary="The customer signs the receipt they were shown; it is sealed and paid",
    responses={409: {"description": "The hash names another receipt than the current one"}},
)
async def sign(
    receipt_id: PathId, body: SignIn, runtime: RuntimeDep, actor: ActorDep
) -> ReceiptView:
    receipt = await customers_own(runtime, actor, receipt_id, "signs")
    if abs((body.signature.signed_at - utcnow()).total_seconds()) > 600:
        raise Unprocessable("signed_at is not the time of signing", field="signature.signed_at")
    await priced_now(runtime, receipt)  # a receipt that changed must be looked at again
    # Sealing moves the store's chain head: this process's signings for one store take turns.
    async with SEALING.hold(receipt.store_id):
        signed = await runtime.uow.run(
            lambda tx: commands.sign(tx, receipt_id, body.receipt_hash, body.signature)
        )
    return ReceiptView.of(signed, actor)


class DisputedItemIn(Forbid):
    code: str = Field(min_length=1, max_length=64, description="The item's code on the receipt")
    quantity: int = Field(ge=1, le=100, description="How many to take off")
    reason: DisputeReason = Field(
        description="not_done (a service), not_used (a product), fewer (than recorded)"
    )


class DisputeIn(Forbid):
    receipt_hash: str = Field(
        pattern=r"^[0-9a-f]{64}$", description="content_hash of the receipt the customer saw"
    )
    items: list[DisputedItemIn] = Field(min_length=1, max_length=50)

    @model_validator(mode="after")
    def each_item_once(self) -> DisputeIn:
        codes = [item.code for item in self.items]
        if len(set(codes)) != len(codes):
            raise ValueError("name each item once, with how many to take off")
        return self


@router.post(
    "/receipts/{receipt_id}/dispute",
    tags=["receipts"],
    summary="Before signing, the customer takes off items they did not get; they then sign "
    "the next revision",
    responses={
        409: {
            "description": "The hash names another receipt than the current one, or it is "
            "signed or withdrawn"
        },
        422: {"description": "An item not on the receipt, more than it has, or all of it"},
    },
)
async def dispute(
    receipt_id: PathId, body: DisputeIn, runtime: RuntimeDep, actor: ActorDep
) -> ReceiptView:
    receipt = await customers_own(runtime, actor, receipt_id, "disputes")
    await priced_now(runtime, receipt)  # a receipt that changed must be looked at again
    asked = [(item.code, item.quantity, item.reason) for item in body.items]
    disputed = await runtime.uow.run(
        lambda tx: commands.dispute(tx, receipt_id, body.receipt_hash, asked)
    )
    return ReceiptView.of(disputed, actor)


class DisputedReceipt(Forbid):
    """A receipt a customer took items off before signing, as operations and its store list
    it: what was taken off, from which technician's record (who the customer is, the list
    leaves out; the receipt itself names them, as to every reader of it)."""

    receipt_id: str
    booking_id: str
    technician_id: str
    store_id: str
    status: ReceiptStatus
    currency: str
    total: int = Field(description="What the receipt came to after the disputes")
    taken_off: int
    disputed_at: datetime
    disputes: list[Dispute]

    @classmethod
    def of(cls, receipt: Receipt) -> DisputedReceipt:
        return cls(
            receipt_id=receipt.receipt_id,
            booking_id=receipt.booking_id,
            technician_id=receipt.technician_id,
            store_id=receipt.store_id,
            status=receipt.status,
            currency=receipt.currency,
            total=receipt.subtotal,
            taken_off=sum(item.amount for d in receipt.disputes for item in d.items),
            disputed_at=receipt.disputed_at or receipt.issued_at,
            disputes=receipt.disputes,
        )


@router.get(
    "/receipt-disputes",
    tags=["receipts"],
    summary="Receipts customers took items off before signing, the latest first: any for "
    "operations (by technician or store), a store's own technicians' for the store",
)
async def list_disputes(
    runtime: RuntimeDep,
    actor: ActorDep,
    store_id: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    technician_id: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[DisputedReceipt]:
    scope = actor.store_scope(store_id, what="the list of disputed receipts").get("store_id")
    found = await Receipts(runtime.db).disputed(scope, technician_id, limit)
    return [DisputedReceipt.of(receipt) for receipt in found]


@router.get(
    "/receipts/{receipt_id}/sealed",
    tags=["receipts"],
    summary="The sealed receipt: what `verify receipt.json` checks offline",
)
async def sealed(receipt_id: PathId, runtime: RuntimeDep, actor: ActorDep) -> dict[str, Any]:
    receipt = await readable(runtime, actor, receipt_id)
    return receipt.sealed_document()


class VerifyIn(Forbid):
    receipt: dict[str, Any]
    seal: dict[str, Any]


class VerifyOut(Forbid):
    valid: bool
    problems: list[str]
    matches_record: bool = Field(
        description="The platform holds this very receipt, sealed, in its store's chain"
    )


@router.post(
    "/receipts/verify",
    tags=["receipts"],
    summary="Anyone may check a sealed receipt: signature, key and the platform's record",
)
async def verify_receipt(body: VerifyIn, runtime: RuntimeDep) -> VerifyOut:
    document = body.model_dump()
    problems = verify(document, await SealingKeys(runtime.db, runtime.settings).published())
    receipt_id = body.receipt.get("receipt_id")
    stored = await Receipts(runtime.db).get(receipt_id) if isinstance(receipt_id, str) else None
    matches = (
        stored is not None and stored.seal is not None and stored.sealed_document() == document
    )
    if not matches:
        problems.append("the platform holds no such sealed receipt")
    return VerifyOut(valid=not problems, problems=problems, matches_record=matches)


@router.get(
    "/stores/{store_id}/receipt-chain",
    tags=["receipts"],
    summary="A store's sealed receipts in chain order (`verify chain.json --chain`)",
)
async def receipt_chain(
    store_id: PathId, runtime: RuntimeDep, actor: ActorDep
) -> list[dict[str, Any]]:
    if not actor.speaks_for_store(store_id):
        raise Forbidden("a store's chain is for that store and operations")
    return [r.sealed_document() for r in await Receipts(runtime.db).chain(store_id)]


class SealingKeysOut(Forbid):
    current: str
    keys: dict[str, str] = Field(description="key id: Ed25519 public key, base64url")


@router.get("/sealing-keys", tags=["receipts"], summary="Public keys that verify sealed receipts")
async def sealing_keys(runtime: RuntimeDep) -> SealingKeysOut:
    keys = SealingKeys(runtime.db, runtime.settings)
    current = await keys.current()
    return SealingKeysOut(current=current.key_id, keys=await keys.published())


@router.post("/sealing-keys/rotate", tags=["receipts"], summary="Seal from now on with a new key")
async def rotate_sealing_key(runtime: RuntimeDep, actor: ActorDep) -> SealingKeysOut:
    actor.require(Role.OPS)
    keys = SealingKeys(runtime.db, runtime.settings)
    new = await keys.rotate()
    return SealingKeysOut(current=new, keys=await keys.published())


# ------------------------------------------------------------------- payments --


class CashIn(Forbid):
    amount: Sum


@router.post(
    "/receipts/{receipt_id}/cash",
    tags=["payments"],
    summary="The technician records cash: only against a signed receipt, only its exact amount",
)
async def cash(
    receipt_id: PathId, body: CashIn, runtime: RuntimeDep, actor: ActorDep
) -> ReceiptView:
    actor.require(Role.TECHNICIAN)
    receipt = await runtime.uow.run(
        lambda tx: commands.collect_cash(tx, receipt_id, actor.subject, body.amount)
    )
    return ReceiptView.of(receipt, actor)


class PaymentMethodIn(Forbid):
    payment_method: str = Field(
        min_length=3, max_length=64, pattern=r"^pm_[A-Za-z0-9_]+$", description="Provider token"
    )


@router.post(
    "/receipts/{receipt_id}/pay",
    tags=["payments"],
    summary="The customer pays a signed receipt by card (after a decline, or without a wallet)",
)
async def pay(
    receipt_id: PathId, body: PaymentMethodIn, runtime: RuntimeDep, actor: ActorDep
) -> ProviderOp:
    receipt = await readable(runtime, actor, receipt_id)
    if actor.role is not Role.CUSTOMER:
        raise Forbidden("only the customer pays their receipt")
    if receipt.status is not ReceiptStatus.SEALED:
        raise Conflict(f"the receipt is {receipt.status.value}: nothing to pay")

    async def work(tx: Any) -> ProviderOp:
        current = await commands.load(tx, receipt_id)
        if current.status is not ReceiptStatus.SEALED:
            raise Conflict(f"the receipt is {current.status.value}: nothing to pay")
        op = await commands.start_charge(tx, current, body.payment_method)
        # Touch the receipt so a technician recording cash at the same moment conflicts
        # with this charge (one of the two gets 409), never both paid.
        await Receipts(tx.db).save(current, tx.session)
        return op

    return await runtime.uow.run(work)


# Why operations write a receipt off, or take the write-off back.
OpsReason = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=3, max_length=500),
    Field(description="Operations' own note: never shown to the customer, technician or store"),
]


class WriteOffIn(Forbid):
    reason: OpsReason = Field(examples=["three reminders unanswered"])


class ReopenIn(Forbid):
    reason: OpsReason = Field(
        examples=["the technician holds the cash: the customer paid at the door after all"]
    )


async def _decided_by_operations(
    runtime: RuntimeDep,
    actor: Actor,
    decide: Callable[[Transaction, str, str, str], Awaitable[Receipt]],
    receipt_id: str,
    reason: str,
) -> ReceiptView:
    actor.require(Role.OPS)
    receipt = await runtime.uow.run(lambda tx: decide(tx, receipt_id, actor.subject, reason))
    return ReceiptView.of(receipt, actor)


@router.post(
    "/receipts/{receipt_id}/write-off",
    tags=["payments"],
    summary="Operations give up what a signed receipt still owes (no more reminders)",
)
async def write_off(
    receipt_id: PathId, body: WriteOffIn, runtime: RuntimeDep, actor: ActorDep
) -> ReceiptView:
    return await _decided_by_operations(runtime, actor, commands.write_off, receipt_id, body.reason)


@router.post(
    "/receipts/{receipt_id}/reopen",
    tags=["payments"],
    summary="Operations take a write-off back: the money is due again (no reminders restart)",
)
async def reopen(
    receipt_id: PathId, body: ReopenIn, runtime: RuntimeDep, actor: ActorDep
) -> ReceiptView:
    return await _decided_by_operations(runtime, actor, commands.reopen, receipt_id, body.reason)


@router.get(
    "/receipts/{receipt_id}/operations",
    tags=["payments"],
    summary="Charges and refunds sent to the provider for a receipt",
)
async def operations(receipt_id: PathId, runtime: RuntimeDep, actor: ActorDep) -> list[ProviderOp]:
    await readable(runtime, actor, receipt_id)
    found = await ProviderOps(runtime.db).of_receipt(receipt_id)
    if actor.is_ops:
        return found
    # Whether the provider answered is operations' to chase, as on the board.
    unanswered = {"unanswered": 0, "last_unanswered_at": None, "alerted": False}
    if actor.role is Role.CUSTOMER:
        return [op.model_copy(update=unanswered) for op in found]
    # The technician and the store see what was charged and whether it went through: not the
    # customer's card, nor the bank's words about it, nor the provider's references.
    return [
        op.model_copy(
            update={
                "payment_method": "",
                "reason": "declined" if op.status == "declined" else "",
                "reference": None,
                "charge_reference": None,
                **unanswered,
            }
        )
        for op in found
    ]


@router.put(
    "/customers/{customer_id}/payment-method",
    tags=["payments"],
    summary="The card (provider token) a customer's signed receipts are charged to",
)
async def set_payment_method(
    customer_id: PathId, body: PaymentMethodIn, runtime: RuntimeDep, actor: ActorDep
) -> PaymentMethodIn:
    if not (actor.role is Role.CUSTOMER and actor.subject == customer_id):
        raise Forbidden("only the customer sets their payment method")
    await Wallets(runtime.db).set(customer_id, body.payment_method)
    return body


@router.delete(
    "/customers/{customer_id}/payment-method",
    tags=["payments"],
    status_code=status.HTTP_204_NO_CONTENT,
    summary="The customer removes their card: signed receipts are then paid at the door in cash",
)
async def remove_payment_method(
    customer_id: PathId, runtime: RuntimeDep, actor: ActorDep
) -> Response:
    if not (actor.role is Role.CUSTOMER and actor.subject == customer_id):
        raise Forbidden("only the customer removes their payment method")
    # A charge already under way keeps the token it was given; removing twice is no error.
    await Wallets(runtime.db).remove(customer_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


class RefundIn(Forbid):
    amount: Sum | None = Field(default=None, description="None: all that was paid")
    reason: str = Field(min_length=3, max_length=500)


@router.post(
    "/receipts/{receipt_id}/refunds",
    tags=["payments"],
    summary="Operations refund, fully or partly, back the way the money came",
)
async def refund(
    receipt_id: PathId,
    body: RefundIn,
    runtime: RuntimeDep,
    actor: ActorDep,
    idempotency_key: RefundKey,
) -> Refund:
    actor.require(Role.OPS)
    if body.amount == 0:
        raise Unprocessable("a refund must be a positive amount", field="amount")
    if idempotency_key.startswith(REMEDY_REFUND):
        # Those name a complaint's remedies: taking one would stand for (or stand in for)
        # the refund the complaint's resolution makes.
        raise Unprocessable(
            f"an Idempotency-Key starting {REMEDY_REFUND!r} is the platform's own",
            field="Idempotency-Key",
        )
    return await runtime.uow.run(
        lambda tx: commands.refund(
            tx, receipt_id, idempotency_key, body.amount, body.reason, same_request=True
        )
    )


class RepaidIn(Forbid):
    way: RepaidWay = Field(description="How the money went back instead of to the card")
    reference: str = Field(
        min_length=3,
        max_length=120,
        description="The bank transfer's reference, or the cash receipt's number",
    )

    def by(self, actor: Actor) -> Repayment:
        return Repayment(way=self.way, reference=self.reference, by=actor.subject, at=utcnow())


@router.post(
    "/receipts/{receipt_id}/refunds/{refund_id}/repaid",
    tags=["payments"],
    summary="Operations record a refund's money given back by hand: what the card declined, "
    "or cash to hand back",
)
async def refund_repaid(
    receipt_id: PathId, refund_id: RefundId, body: RepaidIn, runtime: RuntimeDep, actor: ActorDep
) -> Refund:
    actor.require(Role.OPS)
    repaid = body.by(actor)
    return await runtime.uow.run(
        lambda tx: commands.repay_refund(tx, receipt_id, refund_id, repaid)
    )


# ---------------------------------------------------------- cancellation fees --


def _customer_or_ops(actor: Actor, customer_id: str) -> bool:
    return actor.is_ops or (actor.role is Role.CUSTOMER and actor.subject == customer_id)


@router.get(
    "/cancellation-fees",
    tags=["payments"],
    summary="Late-cancellation fees, newest first: a customer's own, or any for operations "
    "(e.g. status=owed: the ones to chase or waive)",
)
async def list_cancellation_fees(
    runtime: RuntimeDep,
    actor: ActorDep,
    customer_id: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    status: FeeStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[CancellationFee]:
    if not (actor.is_ops or (customer_id is not None and _customer_or_ops(actor, customer_id))):
        raise Forbidden("a customer's fees are theirs and operations'")
    fees = await CancellationFees(runtime.db).listed(customer_id, status, limit)
    return [fee.seen_by(actor.is_ops) for fee in fees]


async def _fee_of(runtime: Runtime, actor: Actor, fee_id: str) -> CancellationFee:
    fee = await CancellationFees(runtime.db).get(fee_id)
    if fee is None or not _customer_or_ops(actor, fee.customer_id):
        raise NotFound(f"cancellation fee {fee_id} does not exist")  # another's: not said
    return fee


@router.get(
    "/cancellation-fees/{fee_id}",
    tags=["payments"],
    summary="A late-cancellation fee (its id is fee_ and the booking's id)",
)
async def get_cancellation_fee(
    fee_id: PathId, runtime: RuntimeDep, actor: ActorDep
) -> CancellationFee:
    return (await _fee_of(runtime, actor, fee_id)).seen_by(actor.is_ops)


@router.post(
    "/cancellation-fees/{fee_id}/pay",
    tags=["payments"],
    summary="The customer pays an owed fee by card (after a decline, or without a wallet)",
)
async def pay_cancellation_fee(
    fee_id: PathId, body: PaymentMethodIn, runtime: RuntimeDep, actor: ActorDep
) -> ProviderOp:
    actor.require(Role.CUSTOMER)  # and the fee must be theirs: the command checks it
    return await runtime.uow.run(
        lambda tx: commands.pay_cancellation_fee(tx, fee_id, actor.subject, body.payment_method)
    )


class WaiverIn(Forbid):
    reason: str = Field(min_length=3, max_length=500)


@router.post(
    "/cancellation-fees/{fee_id}/waive",
    tags=["payments"],
    summary="Operations forgive a fee nobody has paid",
)
async def waive_cancellation_fee(
    fee_id: PathId, body: WaiverIn, runtime: RuntimeDep, actor: ActorDep
) -> CancellationFee:
    actor.require(Role.OPS)
    return await runtime.uow.run(
        lambda tx: commands.waive_cancellation_fee(tx, fee_id, actor.subject, body.reason)
    )


@router.post(
    "/cancellation-fees/{fee_id}/refund-repaid",
    tags=["payments"],
    summary="Operations record that they repaid another way a fee the card would not take back",
)
async def fee_refund_repaid(
    fee_id: PathId, body: RepaidIn, runtime: RuntimeDep, actor: ActorDep
) -> CancellationFee:
    actor.require(Role.OPS)
    repaid = body.by(actor)
    return await runtime.uow.run(lambda tx: commands.repay_fee_refund(tx, fee_id, repaid))


class WebhookIn(Forbid):
    event_id: str
    type: str = Field(pattern=r"^(charge|refund)\.(succeeded|declined)$")
    key: str
    reference: str
    amount: int
    reason: str = ""


@router.post(
    "/provider/webhook",
    tags=["payments"],
    summary="The payment provider confirms a charge or refund (signed; duplicates are harmless)",
)
async def provider_webhook(request: Request, runtime: RuntimeDep) -> dict[str, bool]:
    body = await request.body()
    secret = await webhook_secret(runtime.db, runtime.settings)
    if not webhook_is_authentic(secret, body, request.headers.get(SIGNATURE_HEADER)):
        raise Unauthenticated("the webhook signature does not match")
    try:
        hook = WebhookIn.model_validate(json.loads(body))
    except (ValueError, ValidationError) as exc:
        raise Unprocessable(f"not a provider webhook: {exc}") from None
    result = ProviderResult(
        hook.key, hook.reference, ProviderStatus(hook.type.split(".")[1]), hook.reason
    )
    acted = await runtime.uow.run(lambda tx: commands.apply_outcome(tx, hook.key, result))
    return {"acted": acted}


# ------------------------------------------------------------ prepaid and coupons --


class PlanIn(Forbid):
    store_id: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=120)
    kind: PlanKind
    price: Amount
    currency: Currency
    visits: int | None = Field(default=None, ge=1, le=1000)
    value: Amount | None = None
    covers: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        default_factory=list, max_length=50
    )
    validity_days: int = Field(default=365, ge=1, le=3660)

    @model_validator(mode="after")
    def amount_fits_kind(self) -> PlanIn:
        if self.kind is PlanKind.STORED_VALUE:
            if not self.value or self.visits is not None:
                raise ValueError("stored value has a positive value and no visits")
        elif not self.visits or self.value is not None:
            raise ValueError(f"a {self.kind.value} has a number of visits and no value")
        return self


def store_or_ops(actor: Actor, store_id: str) -> None:
    if not actor.speaks_for_store(store_id):
        raise Forbidden("only the store itself or operations")


@router.put("/plans/{plan_id}", tags=["prepaid"], summary="A store publishes a card or package")
async def put_plan(plan_id: PathId, body: PlanIn, runtime: RuntimeDep, actor: ActorDep) -> Plan:
    store_or_ops(actor, body.store_id)
    plans = Plans(runtime.db)
    existing = await plans.get(plan_id)
    if existing is not None:
        store_or_ops(actor, existing.store_id)
        if existing.store_id != body.store_id:
            raise Conflict("a plan stays with its store", field="store_id")
    plan = Plan(plan_id=plan_id, **body.model_dump())
    # Holdings keep their own copy of the terms: changing a plan changes future sales only.
    doc = plans.to_doc(plan)
    del doc["_id"]
    await put_owned(plans.col, plan_id, body.store_id, doc, what="plan")
    return plan


@router.get("/plans", tags=["prepaid"], summary="A store's cards and packages (public)")
async def list_plans(
    runtime: RuntimeDep, store_id: Annotated[str, Query(min_length=1, max_length=64)]
) -> list[Plan]:
    return await Plans(runtime.db).find({"store_id": store_id}, limit=500)


class SaleIn(Forbid):
    plan_id: str = Field(min_length=1, max_length=64)
    customer_id: str = Field(min_length=1, max_length=64)


@router.post("/holdings", tags=["prepaid"], summary="A store sells a plan to a customer")
async def sell_plan(
    body: SaleIn, runtime: RuntimeDep, actor: ActorDep, idempotency_key: IdempotencyKey
) -> Holding:
    plan = await Plans(runtime.db).get(body.plan_id)
    if plan is None:
        raise NotFound(f"plan {body.plan_id} does not exist", field="plan_id")
    store_or_ops(actor, plan.store_id)
    holding_id = f"hd_{uuid.uuid5(uuid.NAMESPACE_URL, f'{plan.store_id}/{idempotency_key}').hex}"
    return await runtime.uow.run(
        lambda tx: commands.sell_plan(tx, plan, body.customer_id, holding_id)
    )


class HoldingView(Forbid):
    holding: Holding
    balance: int = Field(description="The sum of the entries")
    spendable: int = Field(description="What may be spent now (nothing once expired)")

    @classmethod
    def of(cls, holding: Holding, *, store: bool = False) -> HoldingView:
        holding = holding.seen_by(store=store)
        return cls(holding=holding, balance=holding.balance, spendable=holding.spendable(utcnow()))


@router.get("/holdings", tags=["prepaid"], summary="A customer's cards and packages")
async def list_holdings(
    runtime: RuntimeDep,
    actor: ActorDep,
    customer_id: Annotated[str, Query(min_length=1, max_length=64)],
) -> list[HoldingView]:
    holdings = await Holdings(runtime.db).of_customer(customer_id)
    if (actor.role is Role.CUSTOMER and actor.subject == customer_id) or actor.is_ops:
        visible = holdings
    elif actor.role is Role.STORE:
        visible = [h for h in holdings if h.store_id == actor.store_id]
    else:
        raise Forbidden("a customer's cards are theirs, their stores' and operations'")
    return [HoldingView.of(h, store=actor.role is Role.STORE) for h in visible]


class CouponIn(Forbid):
    customer_id: str = Field(min_length=1, max_length=64)
    currency: Currency
    amount: Amount | None = None
    percent: int | None = Field(default=None, ge=1, le=100)
    valid_days: int = Field(default=90, ge=1, le=730)
    reason: str = Field(min_length=3, max_length=200)

    @model_validator(mode="after")
    def one_kind(self) -> CouponIn:
        if (self.amount is None) == (self.percent is None):
            raise ValueError("a coupon is either an amount or a percent")
        if self.amount == 0:
            raise ValueError("a coupon's amount is positive")
        return self


@router.post("/coupons", tags=["prepaid"], summary="Operations grant a coupon")
async def grant_coupon(
    body: CouponIn, runtime: RuntimeDep, actor: ActorDep, idempotency_key: IdempotencyKey
) -> Coupon:
    actor.require(Role.OPS)
    coupon = Coupon(
        coupon_id=f"cp_{uuid.uuid5(uuid.NAMESPACE_URL, idempotency_key).hex}",
        customer_id=body.customer_id,
        currency=body.currency,
        amount=body.amount,
        percent=body.percent,
        reason=body.reason,
        expires_at=utcnow() + timedelta(days=body.valid_days),
    )
    return await runtime.uow.run(lambda tx: commands.grant_coupon(tx, coupon))


class CouponView(Coupon):
    reference: str = Field(description="What a receipt's discount names this coupon by")


@router.get("/coupons", tags=["prepaid"], summary="A customer's coupons")
async def list_coupons(
    runtime: RuntimeDep,
    actor: ActorDep,
    customer_id: Annotated[str, Query(min_length=1, max_length=64)],
) -> list[CouponView]:
    if not (actor.is_ops or (actor.role is Role.CUSTOMER and actor.subject == customer_id)):
        raise Forbidden("a customer's coupons are theirs and operations'")
    return [
        CouponView(**c.model_dump(), reference=coupon_reference(c.coupon_id))
        for c in await Coupons(runtime.db).of_customer(customer_id)
    ]


# ------------------------------------------------------------------ settlements --


def _week(week: str) -> str:
    try:
        week_start(week)
    except ValueError as e:
        raise Unprocessable(str(e), field="week") from e
    return week


WeekIn = Annotated[str, Path(pattern=WEEK_PATTERN, examples=["2026-W47"])]
StoreIn = Annotated[str, Path(min_length=1, max_length=64)]


@router.get(
    "/settlements",
    tags=["settlements"],
    summary="Stores' weekly statements, the latest week first: a store's own; operations' "
    "of one store or of every store; or every week still due, of any age",
)
async def list_settlements(
    runtime: RuntimeDep,
    actor: ActorDep,
    *,
    store_id: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    week: Annotated[
        str | None, Query(pattern=WEEK_PATTERN, description="One ISO week (UTC)")
    ] = None,
    weeks: Annotated[
        int, Query(ge=1, le=53, description="Without `week`: this many, up to this one")
    ] = 8,
    status: Annotated[
        StatementStatus | None,
        Query(description="Only these; `due` without `week`: every week due, however old"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=2000)] = 500,
) -> list[Statement]:
    scope: Document = actor.store_scope(store_id, what="a store's settlements")
    now = utcnow()
    kept_through = await Settlements(runtime.db).kept_through()
    if status == "due" and week is None:
        # Every week due is kept (payments' timer keeps each once it is over), whatever its
        # age: read, not added up.
        found = await Settlements(runtime.db).due(scope, limit)
    else:
        if week is not None:
            scope["week"] = _week(week)
        else:
            scope["week"] = {"$in": [week_of(now - timedelta(weeks=n)) for n in range(weeks)]}
        found = await commands.statements(
            runtime.db, scope, runtime.settings, now, kept_through=kept_through
        )
        found = [s for s in found if status is None or s.status == status]
    return [statement.seen_by(actor.is_ops) for statement in found[:limit]]


@router.get(
    "/settlements/{store_id}/{week}/entries",
    tags=["settlements"],
    summary="What a store's week is made of: every movement of money on its visits' "
    "receipts entered that week, receipt by receipt",
)
async def settlement_entries(
    store_id: StoreIn,
    week: WeekIn,
    runtime: RuntimeDep,
    actor: ActorDep,
    *,
    after: Annotated[
        str | None, Query(min_length=1, max_length=200, description="The last entry seen")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[Entered]:
    actor.store_scope(store_id, what="a store's settlements")
    return await Ledger(runtime.db).entries(store_id, _week(week), after, limit)


class CloseIn(Forbid):
    currency: Currency
    payable: int = Field(
        description="What the statement said was payable when operations settled it: a "
        "statement that reads differently now is not closed"
    )
    reference: str = Field(
        min_length=3, max_length=120, description="The transfer's reference, either way"
    )


@router.post(
    "/settlements/{store_id}/{week}/close",
    tags=["settlements"],
    summary="Operations settled a store's week (paid it, or were paid): the statement is final",
)
async def close_settlement(
    store_id: StoreIn, week: WeekIn, body: CloseIn, runtime: RuntimeDep, actor: ActorDep
) -> Statement:
    actor.require(Role.OPS)
    week = _week(week)
    return await runtime.uow.run(
        lambda tx: commands.close_settlement(
            tx,
            store_id=store_id,
            week=week,
            currency=body.currency,
            by=actor.subject,
            reference=body.reference,
            payable_seen=body.payable,
        )
    )


# ----------------------------------------------------------------------- margins --


@router.get(
    "/margins",
    tags=["settlements"],
    summary="Operators: which regions, stores or technicians make the platform money and "
    "which lose it, week by week",
)
async def read_margins(
    runtime: RuntimeDep,
    actor: ActorDep,
    *,
    by: MarginBy = MarginBy.REGION,
    week: Annotated[
        str | None,
        Query(pattern=WEEK_PATTERN, description="The latest week shown (default: this one)"),
    ] = None,
    weeks: Annotated[int, Query(ge=1, le=26, description="This many, up to `week`")] = 4,
    store_id: Annotated[
        str | None, Query(min_length=1, max_length=64, description="One store's visits only")
    ] = None,
    order: Annotated[
        MarginOrder, Query(description="losing: the worst margins first; making: the best")
    ] = "losing",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Margins:
    actor.require(Role.OPS)
    latest = week_start(_week(week)) if week is not None else utcnow()
    shown = [week_of(latest - timedelta(weeks=n)) for n in range(weeks)]
    return await commands.margins(
        runtime.db,
        runtime.settings,
        by=by,
        weeks=shown,
        store_id=store_id,
        order=order,
        limit=limit,
    )
