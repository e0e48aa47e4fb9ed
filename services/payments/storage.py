"""Payments' MongoDB collections.

receipts       one per booking; sealed ones are never replaced (the filter refuses it)
chains         per store: the hash of its last sealed receipt and how many it has
sealing_keys   Ed25519 keys by id; one is current, the others still verify old seals
plans          what stores sell: cards, packages, stored value
holdings       a customer's cards and packages, each a ledger of entries
coupons        discounts granted to a customer (complaint remedies, goodwill)
wallets        a customer's payment method (a provider token, never a card number)
provider_ops   every charge and refund sent to the provider, by idempotency key
cancellation_fees  late-cancellation fees owed, charged, paid or waived; one per booking
refunds_waiting    complaints' refunds granted before the booking's receipt exists
settlement_entries every movement of money on a store's signed receipts, by week entered
settlements        stores' weekly statements of weeks over, as kept (due) or closed, and
                   `kept_through`: the last week whose statements are all kept
migrations         one-off changes to stored rows, each done once (its name, when, how many)
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from pymongo import ASCENDING, DESCENDING, IndexModel, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection

from services.payments.domain import (
    Coupon,
    GrantedRefund,
    Receipt,
    ReceiptStatus,
    RefundsWaiting,
)
from services.payments.fees import CancellationFee, FeeStatus
from services.payments.ledger import Holding, Plan
from services.payments.margins import FeesKept, MarginBy, Summed, WrittenOff
from services.payments.sealing import GENESIS, SealingKey, digest
from services.payments.settlements import (
    Entered,
    Entry,
    EntryKind,
    Statement,
    Totals,
    entries_of,
    entry_ids,
    week_after,
    week_before,
    week_of,
)
from shared.errors import Conflict, VersionMismatch
from shared.keyring import KeyRing
from shared.mongo import Database, Document, Session, Versioned
from shared.settings import Settings
from shared.time import utcnow
from shared.timers import schedule

RECEIPTS = "receipts"
CHAINS = "chains"
SEALING_KEYS = "sealing_keys"
PLANS = "plans"
HOLDINGS = "holdings"
COUPONS = "coupons"
WALLETS = "wallets"
PROVIDER_OPS = "provider_ops"
CANCELLATION_FEES = "cancellation_fees"
REFUNDS_WAITING = "refunds_waiting"
REFUNDS_WAITING_KEPT_S = 180 * 24 * 3600
SETTLEMENT_ENTRIES = "settlement_entries"
SETTLEMENTS = "settlements"
MIGRATIONS = "migrations"
ENTERED_BEFORE = "settlements.entered_before"
# The settlements collection's one document that is not a statement: the last week whose
# statements are all kept (its field has no name a statement's query asks for).
KEPT_THROUGH = "kept_through"
KEEP_WEEKS = "keep_weeks"  # the timer that keeps each week's statements once it is over
SIGNED = [s.value for s in (ReceiptStatus.SEALED, ReceiptStatus.SETTLED, ReceiptStatus.WRITTEN_OFF)]
DISPUTED: Document = {"disputed_at": {"$type": "date"}}  # a receipt a customer took items off


async def ensure_indexes(db: Database) -> None:
    # One receipt per booking, whatever is redelivered.
    await db[RECEIPTS].create_indexes(
        [
            IndexModel([("booking_id", ASCENDING)], unique=True),
            IndexModel([("store_id", ASCENDING), ("chain_position", ASCENDING)]),
            # The lists of disputed receipts (operations', a store's, a technician's): only
            # those are in them, and a store's list reads its own, not every store's.
            IndexModel(
                [("disputed_at", DESCENDING)],
                name="disputed",
                partialFilterExpression=DISPUTED,
            ),
            IndexModel(
                [("store_id", ASCENDING), ("disputed_at", DESCENDING)],
                name="disputed_by_store",
                partialFilterExpression=DISPUTED,
            ),
            IndexModel(
                [("technician_id", ASCENDING), ("disputed_at", DESCENDING)],
                name="disputed_by_technician",
                partialFilterExpression=DISPUTED,
            ),
            # Operators' margins: what was written off in a week, and taken back.
            IndexModel(
                [("write_off.at", ASCENDING)],
                name="written_off",
                partialFilterExpression={"status": ReceiptStatus.WRITTEN_OFF.value},
            ),
            IndexModel([("reopened.at", ASCENDING)], name="taken_back", sparse=True),
        ]
    )
    # A store's week (its statement, its entries in order); every store's week (operations).
    await db[SETTLEMENT_ENTRIES].create_indexes(
        [
            IndexModel([("store_id", ASCENDING), ("week", ASCENDING), ("_id", ASCENDING)]),
            IndexModel([("week", ASCENDING), ("store_id", ASCENDING)]),
        ]
    )
    await db[SETTLEMENTS].create_indexes(
        [
            IndexModel([("store_id", ASCENDING), ("week", ASCENDING)]),
            IndexModel([("week", ASCENDING)]),
            # Every week still due, of any age (operations'; a store's own).
            IndexModel(
                [("store_id", ASCENDING), ("week", DESCENDING)],
                name="due_by_store",
                partialFilterExpression={"status": "due"},
            ),
            IndexModel(
                [("week", DESCENDING)], name="due", partialFilterExpression={"status": "due"}
            ),
        ]
    )
    await enter_receipts_signed_before(db)
    # Keep whatever week is over now (at every start: an upgrade keeps every week before).
    await schedule(db, None, KEEP_WEEKS, "start", utcnow())
    await db[HOLDINGS].create_indexes([IndexModel([("customer_id", ASCENDING)])])
    await db[COUPONS].create_indexes([IndexModel([("customer_id", ASCENDING)])])
    await db[PLANS].create_indexes([IndexModel([("store_id", ASCENDING)])])
    await db[PROVIDER_OPS].create_indexes(
        [IndexModel([("receipt_id", ASCENDING)]), IndexModel([("fee_id", ASCENDING)])]
    )
    # Kept while a complaint may still grant a refund on the booking (a grant later than
    # that, on a booking cancelled unpaid, waits for a receipt that never comes).
    await db[REFUNDS_WAITING].create_indexes(
        [IndexModel("noted_at", name="expire", expireAfterSeconds=REFUNDS_WAITING_KEPT_S)]
    )
    await db[CANCELLATION_FEES].create_indexes(
        [
            IndexModel([("customer_id", ASCENDING), ("cancelled_at", DESCENDING)]),
            IndexModel([("status", ASCENDING), ("cancelled_at", DESCENDING)]),
            # Operators' margins: the fees a week was paid, and those given back.
            IndexModel(
                [("paid_at", ASCENDING)],
                name="fees_kept",
                partialFilterExpression={"paid_at": {"$type": "date"}},
            ),
            IndexModel([("status", ASCENDING), ("refunded_at", ASCENDING)]),
        ]
    )


async def enter_receipts_signed_before(db: Database, batch: int = 1000) -> int:
    """Once: the money of receipts signed before stores were settled by the week is entered
    in an opening week of its own, the week before (due at once, closed by whatever settled
    it until then), not among the week's own. By the ids a receipt's next save would use, so
    a replica saving one meanwhile enters nothing twice; a start that dies half way begins
    again. How many receipts."""
    if await db[MIGRATIONS].find_one({"_id": ENTERED_BEFORE}) is not None:
        return 0
    now = utcnow()
    opening = week_before(week_of(now))
    ledger, receipts = Ledger(db), Receipts(db)
    count, writes = 0, []
    async for doc in db[RECEIPTS].find({"status": {"$in": SIGNED}}):
        writes += ledger.writes(entries_of(receipts.from_doc(doc)), opening, now)
        count += 1
        if len(writes) >= batch:
            await ledger.col.bulk_write(writes, ordered=False)
            writes = []
    if writes:
        await ledger.col.bulk_write(writes, ordered=False)
    await db[MIGRATIONS].update_one(
        {"_id": ENTERED_BEFORE},
        {"$setOnInsert": {"done_at": now, "changed": count, "week": opening}},
        upsert=True,
    )
    return count


# Where a receipt or an entry says which region, store or technician it is of.
MARGIN_FIELD = {
    MarginBy.REGION: "region",
    MarginBy.STORE: "store_id",
    MarginBy.TECHNICIAN: "technician_id",
}
ISO_WEEK = "%G-W%V"  # as settlements.week_of writes it


def margin_key(by: MarginBy) -> Document:
    """The group key of a margin: None where it was not kept (entries before regions)."""
    return {"$ifNull": [f"${MARGIN_FIELD[by]}", None]}


async def moved_by_week(
    col: AsyncCollection[Document], pipelines: Sequence[list[Document]], **key: Any
) -> list[Document]:
    """What each pipeline's documents moved (`move`: its `at` and `amount`), added up by the
    ISO week of `at`, currency and `key` (operators' margins): `_id` and `amount` rows."""
    rows: list[Document] = []
    for pipeline in pipelines:
        group = {
            "$group": {
                "_id": {
                    **key,
                    "week": {"$dateToString": {"format": ISO_WEEK, "date": "$move.at"}},
                    "currency": "$currency",
                },
                "amount": {"$sum": "$move.amount"},
            }
        }
        rows += await (await col.aggregate([*pipeline, group])).to_list()
    return rows


class Receipts(Versioned[Receipt]):
    def __init__(self, db: Database) -> None:
        super().__init__(db, RECEIPTS, Receipt, "receipt_id")

    async def written_off(
        self, by: MarginBy, since: datetime, until: datetime, store_id: str | None
    ) -> list[WrittenOff]:
        """What operations gave up on, by region, store or technician, week and currency:
        each write-off in the week it was made, less each taken back (the money was due
        again) in the week it was, so a week gone by never changes."""
        in_range = {"$gte": since, "$lt": until}
        scope: Document = {} if store_id is None else {"store_id": store_id}
        field = MARGIN_FIELD[by]
        standing: list[Document] = [
            {
                "$match": {
                    "status": ReceiptStatus.WRITTEN_OFF.value,
                    "write_off.at": in_range,
                    **scope,
                }
            },
            {"$project": {field: 1, "currency": 1, "move": "$write_off"}},
        ]
        # Taken back: made in its week, taken back in another (one taken back is after the
        # write-off it takes back, so both are at or after `since` if either is in range).
        taken_back: list[Document] = [
            {"$match": {"reopened.at": {"$gte": since}, **scope}},
            {"$unwind": "$reopened"},
            {
                "$project": {
                    field: 1,
                    "currency": 1,
                    "moves": [
                        "$reopened.write_off",
                        {
                            "at": "$reopened.at",
                            "amount": {"$multiply": ["$reopened.write_off.amount", -1]},
                        },
                    ],
                }
            },
            {"$unwind": "$moves"},
            {"$set": {"move": "$moves"}},
            {"$match": {"move.at": in_range}},
        ]
        rows = await moved_by_week(self.col, (standing, taken_back), key=margin_key(by))
        return [WrittenOff(**row["_id"], amount=row["amount"]) for row in rows]

    def from_doc(self, doc: Document) -> Receipt:
        receipt = super().from_doc(doc)
        # What its save need not enter again (Ledger.enter).
        receipt._entries_read = entry_ids(receipt)
        return receipt

    async def by_booking(self, booking_id: str, session: Session = None) -> Receipt | None:
        doc = await self.col.find_one({"booking_id": booking_id}, session=session)
        return self.from_doc(doc) if doc else None

    async def save(self, item: Receipt, session: Session = None) -> None:
        """A sealed receipt is immutable: only its payment progress may change afterwards.

        Checked without a read: what is written must match its own seal's hash, and the
        stored receipt must be unsealed or carry the very same seal.
        """
        if item.seal is None:  # not signed: no money has moved on it
            await super().save(item, session)
            return
        if digest(item.signed_document()) != item.seal.receipt_hash:
            raise Conflict(f"receipt {item.receipt_id} is sealed: it cannot change")
        seen = item.version
        doc = self.to_doc(item)
        doc["version"] = seen + 1
        result = await self.col.replace_one(
            {
                "_id": item.receipt_id,
                "version": seen,
                "$or": [{"seal": None}, {"seal.signature": item.seal.signature}],
            },
            doc,
            session=session,
        )
        if result.matched_count != 1:
            raise VersionMismatch(f"{item.receipt_id} changed since it was read; read it again")
        item.version = seen + 1
        await Ledger(self.col.database).enter(item, session)

    async def disputed(
        self, store_id: str | None, technician_id: str | None, limit: int
    ) -> list[Receipt]:
        """Receipts customers took items off, the latest dispute first."""
        query = disputed_query(store_id, technician_id)
        return await self.find(query, sort=[("disputed_at", DESCENDING)], limit=limit)

    async def chain(self, store_id: str, limit: int = 10_000) -> list[Receipt]:
        return await self.find(
            {"store_id": store_id, "chain_position": {"$ne": None}},
            sort=[("chain_position", ASCENDING)],
            limit=limit,
        )


def disputed_query(store_id: str | None, technician_id: str | None) -> Document:
    """The disputed receipts, of one store or technician if named (the indexes' filter)."""
    query: Document = dict(DISPUTED)
    if store_id is not None:
        query["store_id"] = store_id
    if technician_id is not None:
        query["technician_id"] = technician_id
    return query


class Ledger:
    """Stores' settlement entries (settlements.py), written with the receipt they come from:
    whatever moved money on it, the receipt's save enters it, once (its id says what it is)."""

    def __init__(self, db: Database) -> None:
        self.col = db[SETTLEMENT_ENTRIES]
        self.settled = db[SETTLEMENTS]

    async def enter(self, receipt: Receipt, session: Session) -> None:
        """Enter what moved on `receipt` since it was read, in the week it is entered: a
        week gone by never changes (settlements.py), nor one kept or closed (a replica
        whose clock is behind enters the week after)."""
        read = receipt._entries_read  # storage's own note on the receipt
        entries = [e for e in entries_of(receipt) if read is None or e.entry_id not in read]
        if not entries:
            return
        now = utcnow()
        week = week_of(now)
        closed, kept = set(), None
        async for d in self.settled.find(
            {
                "$or": [
                    {
                        "store_id": receipt.store_id,
                        "currency": receipt.currency,
                        "week": {"$gte": week},
                    },
                    {"_id": KEPT_THROUGH},
                ]
            },
            {"week": 1, KEPT_THROUGH: 1},
            session=session,
        ):
            if d["_id"] == KEPT_THROUGH:
                kept = d[KEPT_THROUGH]
            else:
                closed.add(d["week"])
        if kept is not None and week <= kept:  # ISO week ids sort as the weeks do
            week = week_after(kept)
        while week in closed:
            week = week_after(week)
        await self.col.bulk_write(self.writes(entries, week, now), ordered=False, session=session)

    @staticmethod
    def writes(entries: list[Entry], week: str, now: datetime) -> list[UpdateOne]:
        """Each entry inserted unless there (by its id: a movement is entered once)."""
        found = []
        for entry in entries:
            doc = Entered(**entry.model_dump(), week=week, entered_at=now).model_dump()
            doc.pop("entry_id")
            found.append(UpdateOne({"_id": entry.entry_id}, {"$setOnInsert": doc}, upsert=True))
        return found

    async def totals(
        self, query: Document, session: Session = None
    ) -> dict[tuple[str, str, str], Totals]:
        """The matching entries added up by (store, week, currency)."""
        totals: dict[tuple[str, str, str], Totals] = {}
        for at, visits, by_kind, held in await self._sums(query, {}, session):
            totals[at["store_id"], at["week"], at["currency"]] = Totals(
                visits=visits, by_kind=by_kind, held=held
            )
        return totals

    async def summed(self, by: MarginBy, query: Document) -> list[Summed]:
        """The matching entries added up by region, store or technician, store, week and
        currency (operators' margins)."""
        return [
            Summed(
                key=at.get("key"),
                store_id=at["store_id"],
                week=at["week"],
                currency=at["currency"],
                visits=visits,
                by_kind=by_kind,
            )
            for at, visits, by_kind, _ in await self._sums(query, {"key": margin_key(by)})
        ]

    async def _sums(
        self, query: Document, more: Document, session: Session = None
    ) -> list[tuple[Document, int, dict[EntryKind, int], int]]:
        """The matching entries added up by store, week, currency and `more`: each group's
        key, its receipts, its takings by kind, and what the store held of them."""
        key = {"store_id": "$store_id", "week": "$week", "currency": "$currency", **more}
        pipeline: list[Document] = [
            {"$match": query},
            {
                "$facet": {
                    "kinds": [
                        {
                            "$group": {
                                "_id": {**key, "kind": "$kind"},
                                "takings": {"$sum": "$takings"},
                                "held": {"$sum": "$held"},
                            }
                        }
                    ],
                    "visits": [
                        {"$group": {"_id": {**key, "receipt": "$receipt_id"}}},
                        {
                            "$group": {
                                "_id": {k: f"$_id.{k}" for k in key},
                                "visits": {"$sum": 1},
                            }
                        },
                    ],
                }
            },
        ]
        [found] = await (await self.col.aggregate(pipeline, session=session)).to_list()

        def group(at: Document) -> tuple[Any, ...]:
            return tuple(at.get(k) for k in key)

        sums: dict[tuple[Any, ...], tuple[Document, int, dict[EntryKind, int], int]] = {}
        for row in found["visits"]:
            sums[group(row["_id"])] = (row["_id"], row["visits"], {}, 0)
        for row in found["kinds"]:
            at, visits, by_kind, held = sums[group(row["_id"])]
            by_kind[EntryKind(row["_id"]["kind"])] = row["takings"]
            sums[group(at)] = (at, visits, by_kind, held + row["held"])
        return list(sums.values())

    async def entries(
        self, store_id: str, week: str, after: str | None, limit: int
    ) -> list[Entered]:
        query: Document = {"store_id": store_id, "week": week}
        if after is not None:
            query["_id"] = {"$gt": after}
        cursor = self.col.find(query, sort=[("_id", ASCENDING)], limit=limit)
        return [Entered.model_validate({"entry_id": d.pop("_id"), **d}) async for d in cursor]


class Settlements(Versioned[Statement]):
    """Statements of weeks over, kept as they read once nothing could enter them any more
    (due), then as operations closed them. Those of weeks after the last kept are added up
    when read (a week due and not kept yet, too: it may be closed so).
    A week kept is never entered again (Ledger.enter reads the mark with the closed weeks;
    only replicas whose clocks differ by more than the close delay less a transaction's
    life, one entering while the other keeps that week, could still)."""

    def __init__(self, db: Database) -> None:
        super().__init__(db, SETTLEMENTS, Statement, "statement_id")

    async def due(self, scope: Document, limit: int) -> list[Statement]:
        """Every week due (kept, not closed) in `scope`, of any age, the latest first."""
        return await self.find({**scope, "status": "due"}, sort=[("week", DESCENDING)], limit=limit)

    async def kept_through(self) -> str | None:
        """The last week whose statements are all kept (None: none yet)."""
        mark = await self.col.find_one({"_id": KEPT_THROUGH})
        return None if mark is None else str(mark[KEPT_THROUGH])

    async def keep(self, statements: list[Statement], through: str) -> None:
        """Keep these statements (each unless kept or closed already: two keepings at once
        write the same), then mark every week up to `through` kept (never back)."""
        writes = []
        for statement in statements:
            doc = self.to_doc(statement.model_copy(update={"version": 1}))
            writes.append(UpdateOne({"_id": doc.pop("_id")}, {"$setOnInsert": doc}, upsert=True))
        if writes:
            await self.col.bulk_write(writes, ordered=False)
        await self.col.update_one(
            {"_id": KEPT_THROUGH}, {"$max": {KEPT_THROUGH: through}}, upsert=True
        )


class ChainHead(BaseModel):
    model_config = ConfigDict(extra="forbid")

    store_id: str
    head: str = GENESIS
    length: int = 0
    version: int = 0


class Chains(Versioned[ChainHead]):
    def __init__(self, db: Database) -> None:
        super().__init__(db, CHAINS, ChainHead, "store_id")

    async def head(self, store_id: str, session: Session) -> ChainHead:
        return await self.get(store_id, session) or ChainHead(store_id=store_id)

    async def advance(self, head: ChainHead, new_head: str, session: Session) -> None:
        """Move the store's chain on by one receipt (two sealings at once: one wins)."""
        advanced = head.model_copy(update={"head": new_head, "length": head.length + 1})
        if head.version == 0:
            await self.insert(advanced.model_copy(update={"version": 1}), session)
        else:
            await self.save(advanced, session)


class Plans(Versioned[Plan]):
    def __init__(self, db: Database) -> None:
        super().__init__(db, PLANS, Plan, "plan_id")


class Holdings(Versioned[Holding]):
    def __init__(self, db: Database) -> None:
        super().__init__(db, HOLDINGS, Holding, "holding_id")

    async def of_customer(self, customer_id: str, session: Session = None) -> list[Holding]:
        return await self.find(
            {"customer_id": customer_id}, session=session, sort=[("expires_at", ASCENDING)]
        )


class Coupons(Versioned[Coupon]):
    def __init__(self, db: Database) -> None:
        super().__init__(db, COUPONS, Coupon, "coupon_id")

    async def of_customer(self, customer_id: str, session: Session = None) -> list[Coupon]:
        return await self.find({"customer_id": customer_id}, session=session)

    async def spend(self, coupon_id: str, receipt_id: str, session: Session) -> None:
        result = await self.col.update_one(
            {"_id": coupon_id, "used_by": None},
            {"$set": {"used_by": receipt_id}, "$inc": {"version": 1}},
            session=session,
        )
        if result.modified_count != 1:
            raise VersionMismatch(f"coupon {coupon_id} was used meanwhile")


class WaitingRefunds(Versioned[RefundsWaiting]):
    def __init__(self, db: Database) -> None:
        super().__init__(db, REFUNDS_WAITING, RefundsWaiting, "booking_id")

    async def of_booking(self, booking_id: str, session: Session) -> tuple[RefundsWaiting, bool]:
        """The booking's (and whether it is new: nothing stored yet)."""
        stored = await self.get(booking_id, session)
        return (stored, False) if stored else (RefundsWaiting(booking_id=booking_id), True)

    async def keep(self, waiting: RefundsWaiting, session: Session, *, new: bool) -> None:
        # A new one inserted by a concurrent transaction conflicts with this one, which is
        # run again and then reads it.
        waiting.noted_at = utcnow()
        await (self.insert if new else self.save)(waiting, session)

    async def hand_over(
        self, booking_id: str, receipt_id: str, session: Session
    ) -> list[GrantedRefund]:
        """The booking's refunds waiting, for its receipt, now issued: marked handed over
        (a write even when there are none, so a grant committing at the same moment
        conflicts with the receipt's transaction rather than slipping past it)."""
        before = await self.col.find_one_and_update(
            {"_id": booking_id},
            {
                "$set": {"receipt_id": receipt_id, "refunds": [], "noted_at": utcnow()},
                "$setOnInsert": {"cancelled_at": None},
                "$inc": {"version": 1},
            },
            upsert=True,
            session=session,
        )
        return [GrantedRefund.model_validate(g) for g in (before or {}).get("refunds", [])]


class Wallets:
    """The customer's payment method: a provider token."""

    def __init__(self, db: Database) -> None:
        self._col = db[WALLETS]

    async def set(self, customer_id: str, token: str) -> None:
        await self._col.update_one(
            {"_id": customer_id},
            {"$set": {"payment_method": token, "updated_at": utcnow()}},
            upsert=True,
        )

    async def remove(self, customer_id: str) -> None:
        await self._col.delete_one({"_id": customer_id})

    async def method_of(self, customer_id: str, session: Session = None) -> str | None:
        doc = await self._col.find_one({"_id": customer_id}, session=session)
        return str(doc["payment_method"]) if doc else None


class ProviderOp(BaseModel):
    """One charge or refund at the provider; its id is the idempotency key sent with it.
    It pays for a receipt, or for a late-cancellation fee."""

    model_config = ConfigDict(extra="forbid")

    op_id: str
    kind: Literal["charge", "refund"]
    receipt_id: str | None = None
    fee_id: str | None = None
    booking_id: str
    customer_id: str
    amount: int
    currency: str
    payment_method: str = ""
    charge_reference: str | None = None  # a refund's charge
    refund_id: str | None = None
    status: str = "pending"  # pending, submitted, succeeded, declined
    reference: str | None = None
    reason: str = ""
    created_at: datetime
    decided_at: datetime | None = None
    # Asks the provider left unanswered (timed out) since it last answered, and whether
    # operations were told.
    unanswered: int = 0
    last_unanswered_at: datetime | None = None
    alerted: bool = False
    version: int = 0

    @property
    def open(self) -> bool:
        return self.status in ("pending", "submitted")


class ProviderOps(Versioned[ProviderOp]):
    def __init__(self, db: Database) -> None:
        super().__init__(db, PROVIDER_OPS, ProviderOp, "op_id")

    async def of_receipt(self, receipt_id: str, session: Session = None) -> list[ProviderOp]:
        return await self.find(
            {"receipt_id": receipt_id}, session=session, sort=[("created_at", ASCENDING)]
        )

    async def of_fee(self, fee_id: str) -> list[ProviderOp]:
        return await self.find({"fee_id": fee_id}, sort=[("created_at", ASCENDING)])


class CancellationFees(Versioned[CancellationFee]):
    def __init__(self, db: Database) -> None:
        super().__init__(db, CANCELLATION_FEES, CancellationFee, "fee_id")

    async def kept(self, since: datetime, until: datetime) -> list[FeesKept]:
        """What fees brought the platform, by week and currency: each fee paid, in the week
        it was paid; less each given back, in the week it was (by the card, or by hand
        after the card refused), so a week gone by never changes."""
        in_range = {"$gte": since, "$lt": until}
        paid: list[Document] = [
            {"$match": {"paid_at": {"$type": "date", **in_range}}},
            {"$set": {"move": {"at": "$paid_at", "amount": "$amount"}}},
        ]
        # Given back by the card when refunded, by hand when repaid (the card refused it);
        # a refund the card refused and nobody repaid is still the platform's.
        given_back: list[Document] = [
            {"$match": {"status": FeeStatus.REFUNDED.value, "refunded_at": {"$lt": until}}},
            {
                "$set": {
                    "move": {
                        "at": {"$ifNull": ["$refund_repaid.at", "$refunded_at"]},
                        "amount": {"$multiply": ["$amount", -1]},
                    }
                }
            },
            {"$match": {"move.at": in_range}},
        ]
        rows = await moved_by_week(self.col, (paid, given_back))
        return [FeesKept(**row["_id"], amount=row["amount"]) for row in rows]

    async def listed(
        self, customer_id: str | None, status: FeeStatus | None, limit: int
    ) -> list[CancellationFee]:
        query: dict[str, str] = {}
        if customer_id is not None:
            query["customer_id"] = customer_id
        if status is not None:
            query["status"] = status.value
        return await self.find(query, sort=[("cancelled_at", DESCENDING)], limit=limit)


class SealingKeys:
    """The receipt-sealing key ring (see shared/keyring.py)."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self._ring = KeyRing(
            db,
            SEALING_KEYS,
            seed=settings.receipt_sealing_seed,
            seed_key_id=settings.receipt_sealing_key_id,
        )

    async def current(self) -> SealingKey:
        key = await self._ring.current()
        return SealingKey(key.key_id, key.private)

    async def rotate(self) -> str:
        return await self._ring.rotate()

    async def published(self) -> dict[str, str]:
        return await self._ring.published()
