"""The living city's operations desk: which complaints it answers with another remedy, and
which remedies it deals with as made twice."""

from __future__ import annotations

from typing import Any

from services.reviews.api import DealtWithIn, ResolutionIn
from sim.desk import INSTEAD, KEPT, made_twice, refund_not_made

PROPOSED = "2030-05-01T08:00:00Z"
EARLIER = "2030-04-30T08:00:00Z"


def waiting(**refund: Any) -> dict[str, Any]:
    """A complaint whose resolution (proposed at PROPOSED) waits for the customer."""
    remedy = {
        "kind": "refund",
        "decided_at": PROPOSED,
        "not_made": None,
        "owed": False,
        "withdrawn_at": None,
        **refund,
    }
    return {"resolution_proposed_at": PROPOSED, "remedies": [remedy]}


def test_the_desk_replaces_only_a_refund_of_the_waiting_resolution_that_owes_nothing() -> None:
    nothing_left = "nothing is left to give back on rc_1"
    assert refund_not_made(waiting(not_made=nothing_left))
    assert not refund_not_made(waiting())  # under way, or made
    assert not refund_not_made(waiting(not_made="cash to hand back", owed=True))  # given back
    assert not refund_not_made(waiting(not_made=nothing_left, decided_at=EARLIER))  # answered
    assert not refund_not_made(waiting(not_made=nothing_left, withdrawn_at=PROPOSED))


def test_what_the_desk_proposes_instead_is_a_resolution_reviews_takes() -> None:
    resolution = ResolutionIn.model_validate(INSTEAD)
    assert [r.kind.value for r in resolution.remedies] == ["coupon"]


def test_the_desk_deals_with_a_remedy_made_or_owed_after_it_was_answered_once() -> None:
    answered = {"kind": "refund", "withdrawn_at": PROPOSED, "took_effect_at": None, "owed": False}
    assert made_twice({**answered, "took_effect_at": PROPOSED})
    assert made_twice({**answered, "owed": True})
    assert not made_twice(answered)  # dropped, never made
    assert not made_twice({**answered, "withdrawn_at": None, "took_effect_at": PROPOSED})
    assert not made_twice({**answered, "owed": True, "dealt_with_at": PROPOSED})


def test_what_the_desk_says_of_one_made_twice_is_what_reviews_takes() -> None:
    assert DealtWithIn.model_validate({"how": KEPT}).how == KEPT
