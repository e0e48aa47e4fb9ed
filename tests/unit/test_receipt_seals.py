"""Seals on signed receipts: round trip, and every kind of tampering detected, offline too."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from services.payments.sealing import (
    GENESIS,
    SealingKey,
    canonical,
    chain_hash,
    verify,
    verify_chain,
)
from services.payments.verify import main as verify_command

KEY = SealingKey.from_seed("k2026", bytes(range(32)))
KEYS = {KEY.key_id: KEY.public_key()}


def receipt(n: int = 1, **over: Any) -> dict[str, Any]:
    return {
        "receipt_id": f"rc_{n}",
        "booking_id": f"bk_{n}",
        "store_id": "store_chiado",
        "lines": [
            {"code": "nails.manicure", "quantity": 2, "unit_price": 2500, "amount": 5000},
            {"code": "nails.polish", "quantity": 1, "unit_price": 900, "amount": 900},
        ],
        "total": 5900,
        "currency": "EUR",
        "signed_by_customer": {"hash": "ab" * 32, "at": "2030-05-01T10:00:00Z"},
        **over,
    }


def sealed(body: dict[str, Any], previous: str = GENESIS, key: SealingKey = KEY) -> dict[str, Any]:
    return {"receipt": body, "seal": key.seal(body, "store_chiado", previous).model_dump()}


def chain(count: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    previous = GENESIS
    for n in range(count):
        item = sealed(receipt(n), previous)
        out.append(item)
        previous = chain_hash(item)
    return out


def test_a_sealed_receipt_verifies() -> None:
    assert verify(sealed(receipt()), KEYS) == []


def test_canonical_bytes_do_not_depend_on_key_order_but_refuse_floats() -> None:
    assert canonical({"b": 1, "a": [1, 2]}) == canonical({"a": [1, 2], "b": 1})
    with pytest.raises(TypeError):
        canonical({"total": 59.0})


@pytest.mark.parametrize(
    "tamper",
    [
        lambda r: r.update(total=5000),
        lambda r: r["lines"][0].update(unit_price=2000),
        lambda r: r["lines"].reverse(),  # re-ordered items
        lambda r: r["lines"].pop(),
        lambda r: r.update(extra="added later"),
        lambda r: r["signed_by_customer"].update(at="2030-05-02T10:00:00Z"),
    ],
    ids=["total", "unit price", "re-ordered lines", "removed line", "added field", "sign time"],
)
def test_any_change_to_the_receipt_is_detected(tamper: Any) -> None:
    item = sealed(receipt())
    tamper(item["receipt"])
    assert verify(item, KEYS) != []


def test_a_seal_by_another_key_or_an_unknown_key_id_is_detected() -> None:
    forger = SealingKey.generate("k2026")  # claims the published key id
    assert any("does not verify" in p for p in verify(sealed(receipt(), key=forger), KEYS))
    stranger = SealingKey.generate("k-unknown")
    assert verify(sealed(receipt(), key=stranger), KEYS) == ["unknown key id 'k-unknown'"]


def test_rotated_keys_keep_old_seals_valid() -> None:
    new = SealingKey.generate("k2027")
    keys = {**KEYS, new.key_id: new.public_key()}
    assert verify(sealed(receipt(1)), keys) == []
    assert verify(sealed(receipt(2), key=new), keys) == []


def test_a_store_chain_verifies_and_a_removed_or_reordered_receipt_breaks_it() -> None:
    good = chain(4)
    assert verify_chain(good, KEYS) == []
    removed = good[:1] + good[2:]
    assert any("chain broken" in p for p in verify_chain(removed, KEYS))
    swapped = [good[0], good[2], good[1], good[3]]
    assert any("chain broken" in p for p in verify_chain(swapped, KEYS))
    altered = copy.deepcopy(good)
    altered[1]["receipt"]["total"] = 1
    problems = verify_chain(altered, KEYS)
    assert any(p.startswith("receipt 1:") for p in problems)
    assert any(p.startswith("receipt 2: chain broken") for p in problems)


def test_the_offline_command_says_valid_or_not(tmp_path: Path, capsys: Any) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps(KEYS))
    good = tmp_path / "receipt.json"
    good.write_text(json.dumps(sealed(receipt())))
    assert verify_command([str(good), "--keys", str(keys)]) == 0
    bad_receipt = sealed(receipt())
    bad_receipt["receipt"]["total"] = 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(bad_receipt))
    assert verify_command([str(bad), "--keys", str(keys)]) == 1
    assert "NOT VALID" in capsys.readouterr().out
    whole = tmp_path / "chain.json"
    whole.write_text(json.dumps(chain(3)))
    assert verify_command([str(whole), "--keys", str(keys), "--chain"]) == 0
