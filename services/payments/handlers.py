"""How payments reacts to other services' events, and to its own timers."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Literal

from services.payments import commands
from services.payments.domain import Coupon
from services.payments.provider import ProviderTimeout, provider_for
from services.payments.storage import KEEP_WEEKS, ProviderOps
from shared.consumer import Handlers
from shared.events.booking import BookingCancelled
from shared.events.dispatch import ServiceCompleted, ServiceCompletedV1, ServiceVoided
from shared.events.reviews import (
    REMEDY_COUPON,
    CouponRemedy,
    CouponRemedyV1,
    RefundGranted,
    RefundGrantedV1,
    RefundWithdrawn,
    remedy_made_id,
)
from shared.faults import crash_point
from shared.outbox import Transaction
from shared.time import utcnow
from shared.timers import Timer, TimerContext, Timers, set_timer

log = logging.getLogger(__name__)

handlers = Handlers()
timers = Timers()


@handlers.on(ServiceCompleted)
@handlers.on(ServiceCompletedV1)
async def issue_receipt(tx: Transaction, event: ServiceCompletedV1) -> None:
    await commands.issue_receipt(tx, event)


@handlers.on(BookingCancelled)
async def cancelled(tx: Transaction, event: BookingCancelled) -> None:
    await commands.refunds_after_cancelling(tx, event)
    await commands.owe_cancellation_fee(tx, event)


@handlers.on(ServiceVoided)
async def withdraw_receipt(tx: Transaction, event: ServiceVoided) -> None:
    await commands.void_receipt(tx, event)


@handlers.on(RefundGranted)
@handlers.on(RefundGrantedV1)
async def complaint_refund(tx: Transaction, event: RefundGrantedV1) -> None:
    await commands.grant_refund(tx, event)


@handlers.on(RefundWithdrawn)
async def complaint_refund_withdrawn(tx: Transaction, event: RefundWithdrawn) -> None:
    await commands.withdraw_refund(tx, event)


@handlers.on(CouponRemedy)
@handlers.on(CouponRemedyV1)
async def complaint_coupon(tx: Transaction, event: CouponRemedyV1) -> None:
    remedy_id = event.remedy_id if isinstance(event, CouponRemedy) else None
    await commands.grant_coupon(
        tx,
        Coupon(
            coupon_id=remedy_made_id(REMEDY_COUPON, event.complaint_id, remedy_id),
            customer_id=event.customer_id,
            currency=event.currency,
            amount=event.amount,
            percent=event.percent,
            reason=event.reason,
            expires_at=utcnow() + timedelta(days=event.valid_days),
        ),
    )


@timers.on(commands.SUBMIT)
async def submit(ctx: TimerContext, timer: Timer) -> None:
    """Send a pending charge or refund, outside any transaction, keyed by its id."""
    op = await ProviderOps(ctx.db).get(timer.subject)
    if op is None or op.status != "pending":
        return
    provider = await provider_for(ctx.db, ctx.settings)
    try:
        if op.kind == "charge":
            result = await provider.charge(op.op_id, op.amount, op.currency, op.payment_method)
        else:
            result = await provider.refund(op.op_id, op.charge_reference or "", op.amount)
    except ProviderTimeout:
        log.warning("provider did not answer for %s; asking again later, same key", op.op_id)
        await ctx.uow.run(lambda tx: commands.ask_again(tx, op.op_id))
        return
    # A crash here: the provider acted, we did not record it. The timer fires again after
    # its lease and the same idempotency key gets the same operation back.
    crash_point("payments.after_provider_call")
    await ctx.uow.run(lambda tx: commands.record_submission(tx, op.op_id, result))


@timers.on(commands.CHECK)
async def check(ctx: TimerContext, timer: Timer) -> None:
    """No webhook came in time: look the operation up, as one does with a real provider."""
    op = await ProviderOps(ctx.db).get(timer.subject)
    if op is None or not op.open:
        return
    try:
        result = await (await provider_for(ctx.db, ctx.settings)).status(op.op_id)
    except ProviderTimeout:
        log.warning("provider did not answer a lookup of %s; looking again later", op.op_id)
        await ctx.uow.run(lambda tx: commands.ask_again(tx, op.op_id, looking_up=True))
        return
    later = utcnow() + timedelta(seconds=ctx.settings.provider_check_after_s)

    async def apply(tx: Transaction) -> None:
        await commands.looked_up(tx, op.op_id)
        if result is None or not await commands.apply_outcome(tx, op.op_id, result):
            await set_timer(tx, commands.CHECK, op.op_id, later)

    await ctx.uow.run(apply)


@timers.on(commands.REMIND)
async def payment_reminder(ctx: TimerContext, timer: Timer) -> None:
    way: Literal["card", "cash"] = "cash" if timer.data.get("way") == "cash" else "card"
    reminder = int(timer.data.get("reminder", 1))
    await ctx.uow.run(lambda tx: commands.remind(tx, timer.subject, way, reminder))


@timers.on(commands.GRANTED)
async def granted_refunds(ctx: TimerContext, timer: Timer) -> None:
    await ctx.uow.run(lambda tx: commands.make_refunds_granted(tx, timer.subject))


@timers.on(commands.EXPIRE)
async def expire(ctx: TimerContext, timer: Timer) -> None:
    await ctx.uow.run(lambda tx: commands.expire_holding(tx, timer.subject))


@timers.on(KEEP_WEEKS)
async def keep_weeks(ctx: TimerContext, timer: Timer) -> None:
    await commands.keep_weeks_over(ctx.db, ctx.settings, utcnow())
