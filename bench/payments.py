"""Sealing and verifying receipts, beside the raw Ed25519 rates of the same machine.

The platform's sealing is the real unit of work a customer's signature runs
(`commands.sign`: re-read, draw nothing, seal over canonical bytes, advance the
store's chain, outbox), on the real MongoDB; verification is the real `verify`
(canonical bytes, hash, signature) and `verify_chain`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.payments import commands
from services.payments.domain import CustomerSignature, Receipt, SignatureMethod
from services.payments.sealing import canonical, verify, verify_chain
from services.payments.storage import Receipts, SealingKeys, ensure_indexes
from shared.events.dispatch import ServiceCompleted
from shared.events.types import PricedLine
from shared.mongo import Database
from shared.outbox import Transaction, UnitOfWork
from shared.settings import Settings


@dataclass
class SealingFigures:
    raw_sign_per_s: float
    raw_verify_us: float
    one_store_per_s: float  # one chain: every sealing waits for the one before
    many_stores_per_s: float  # `stores` chains, `workers` customers signing at once
    verify_us: float
    chain_verify_ms: float
    chain_length: int


def completed(store: str, n: int) -> ServiceCompleted:
    booking = f"bk_{uuid.uuid4().hex[:12]}"
    return ServiceCompleted(
        booking_id=booking,
        visit_id=f"vs_{booking}",
        customer_id=f"cus_{n}",
        technician_id="tech_bench",
        store_id=store,
        region="lisbon",
        completed_at=datetime.now(UTC),
        lines=[
            PricedLine(
                code="nails.manicure",
                name="Manicure",
                skill="nails",
                quantity=2,
                unit_price=2500,
                surcharge=500,
                currency="EUR",
            ),
            PricedLine(
                code="nails.polish",
                name="Polish",
                kind="product",
                quantity=1,
                unit_price=900,
                currency="EUR",
            ),
        ],
    )


def raw_rates(document: dict[str, Any], count: int) -> tuple[float, float]:
    """Ed25519 signatures per second and microseconds per verification, nothing else."""
    key = Ed25519PrivateKey.generate()
    message = canonical(document)
    started = time.perf_counter()
    for _ in range(count):
        signature = key.sign(message)
    signing = count / (time.perf_counter() - started)
    public = key.public_key()
    started = time.perf_counter()
    for _ in range(count):
        public.verify(signature, message)
    verifying = (time.perf_counter() - started) / count * 1e6
    return signing, verifying


async def issue_many(uow: UnitOfWork, stores: list[str], count: int) -> list[Receipt]:
    receipts: list[Receipt] = []
    for n in range(count):
        fact = completed(stores[n % len(stores)], n)

        async def work(tx: Transaction, fact: ServiceCompleted = fact) -> Receipt:
            return await commands.issue_receipt(tx, fact)

        receipts.append(await uow.run(work))
    return receipts


def signature() -> CustomerSignature:
    return CustomerSignature(
        method=SignatureMethod.DRAWN, artefact="ab" * 32, signed_at=datetime.now(UTC)
    )


async def seal_all(uow: UnitOfWork, receipts: list[Receipt], workers: int) -> float:
    queue = list(receipts)

    async def worker() -> None:
        while queue:
            r = queue.pop()

            async def work(tx: Transaction, r: Receipt = r) -> Receipt:
                return await commands.sign(tx, r.receipt_id, r.digest, signature())

            await uow.run(work)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return len(receipts) / (time.perf_counter() - started)


async def sealing(
    client: Any, db: Database, settings: Settings, count: int, *, stores: int = 8, workers: int = 8
) -> SealingFigures:
    await ensure_indexes(db)
    uow = UnitOfWork(client, db, settings)
    await SealingKeys(db, settings).current()  # the first key is made outside the timing
    one = await issue_many(uow, ["store_one"], count)
    one_rate = await seal_all(uow, one, workers=1)
    many = await issue_many(uow, [f"store_{i}" for i in range(stores)], count)
    many_rate = await seal_all(uow, many, workers=workers)

    keys = await SealingKeys(db, settings).published()
    chain = [r.sealed_document() for r in await Receipts(db).chain("store_one")]
    started = time.perf_counter()
    for document in chain:
        assert verify(document, keys) == []
    verify_us = (time.perf_counter() - started) / len(chain) * 1e6
    started = time.perf_counter()
    assert verify_chain(chain, keys) == []
    chain_ms = (time.perf_counter() - started) * 1e3

    raw_sign, raw_verify = raw_rates(chain[0]["receipt"], max(count, 2_000))
    return SealingFigures(
        raw_sign_per_s=raw_sign,
        raw_verify_us=raw_verify,
        one_store_per_s=one_rate,
        many_stores_per_s=many_rate,
        verify_us=verify_us,
        chain_verify_ms=chain_ms,
        chain_length=len(chain),
    )
