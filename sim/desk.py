"""Operations at their desk in the living city: they take every safety alert and answer
every complaint, then propose how to put it right, a tier more generous after the customer
turns a resolution down, and a coupon in place of a refund that had nothing to give back;
a refund made all the same after that coupon was accepted, they let the customer keep.
Without them the dashboard's alerts and complaints only pile up and every complaint breaches
its deadlines."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from sim.client import UNREACHABLE, Caller, Refused

log = logging.getLogger("sim")

# How often the desk looks at its queues: a first response within seconds, well inside
# every deadline, and a few calls a minute whatever the city's rate.
DESK_EVERY_S = 5.0
# What a quality complaint gets back, by the tier that proposes: more after a rejection.
REFUND_BY_TIER = {"agent": 500, "supervisor": 1000, "manager": 2000}
ANSWER = "we are looking into it and come back to you shortly"
TAKEN = "called the customer and the technician's store"
KEPT = "the customer keeps both: the platform bears it, as a goodwill gesture"
CLEARED = "the store vouched for them: the alert was a misunderstanding at the door"
# The alerts that stop a visit, and with it its technician's work until operations clear them.
HALTING = ("wrong_code_lockout", "not_the_person")


def resolution(complaint: dict[str, Any]) -> dict[str, Any]:
    """The desk's resolution: money back for the visit; for safety, no money but the
    technician coached (the alert that opened it was acted on already)."""
    if complaint["category"] == "safety":
        return {
            "text": "we are sorry; the technician's store goes over what happened with them",
            "remedies": [{"kind": "apology"}, {"kind": "coaching"}],
        }
    refund = REFUND_BY_TIER.get(complaint["tier"], REFUND_BY_TIER["manager"])
    return {
        "text": f"we are sorry: {refund / 100:.2f} back on your visit",
        "remedies": [{"kind": "apology"}, {"kind": "refund", "amount": refund}],
    }


# In place of a refund that had nothing to give back (everything paid was refunded already,
# say): a coupon on the next visit, the resolution the customer then answers.
INSTEAD = {
    "text": "we could not refund that, so here is money off your next visit instead",
    "remedies": [{"kind": "coupon", "amount": 500, "currency": "EUR"}],
}


def refund_not_made(complaint: dict[str, Any]) -> bool:
    """Has the resolution waiting for the customer a refund that was not made, and owes
    nothing (cash to hand back, or a card that refused it, is given back instead)?"""
    return any(
        r["not_made"] and not r.get("owed") and not r.get("withdrawn_at")
        for r in complaint["remedies"]
        if r["decided_at"] == complaint["resolution_proposed_at"]
    )


def made_twice(remedy: dict[str, Any]) -> bool:
    """Answered by a later resolution, made (or owed) all the same, and not dealt with."""
    made = remedy.get("took_effect_at") or remedy.get("owed")
    return bool(remedy.get("withdrawn_at") and made and not remedy.get("dealt_with_at"))


class Desk:
    """Looks every `every_s`: proposes a resolution for each complaint answered at an
    earlier look (or reopened by the customer), answers the new ones, takes the alerts."""

    def __init__(self, ops: Caller, tally: Callable[[str], None], every_s: float) -> None:
        self.ops, self.tally, self.every_s = ops, tally, every_s

    async def run(self, running: Callable[[], bool]) -> None:
        while running():
            try:
                await self.look()
            except (Refused, *UNREACHABLE) as exc:
                log.warning("operations desk: %r", exc)  # a restart: the next look goes on
            except Exception:
                log.exception("operations desk: the look failed; the next goes on")
            await asyncio.sleep(self.every_s)

    async def look(self) -> None:
        ops = self.ops
        # Answered at an earlier look: first the response, then the proposal, as people do.
        for c in await ops.json("GET", "/v1/complaints", params={"status": "in_progress"}):
            path = f"/v1/complaints/{c['complaint_id']}/resolution"
            # One key per proposal: a retry whose first try landed proposes nothing twice.
            key = f"desk-{c['complaint_id']}-{len(c['remedies'])}"
            await self.act(path, resolution(c), "resolutions_proposed", key=key)
        # A refund of the resolution the customer has could not be made: another in its place.
        waiting = await ops.json("GET", "/v1/complaints", params={"status": "resolution_proposed"})
        for c in filter(refund_not_made, waiting):
            path = f"/v1/complaints/{c['complaint_id']}/resolution"
            key = f"desk-{c['complaint_id']}-{len(c['remedies'])}"
            await self.act(path, INSTEAD, "remedies_replaced", key=key)
        for c in await ops.json("GET", "/v1/complaints", params={"status": "open"}):
            path = f"/v1/complaints/{c['complaint_id']}/respond"
            await self.act(path, {"text": ANSWER}, "complaints_answered")
        # A refund made after the coupon in its place was accepted: the customer keeps both.
        for c in await ops.json("GET", "/v1/complaints", params={"made_twice": "true"}):
            for r in filter(made_twice, c["remedies"]):
                path = f"/v1/complaints/{c['complaint_id']}/remedies/{r['remedy_id']}/dealt-with"
                await self.act(path, {"how": KEPT}, "twice_dealt_with")
        for alert in await ops.json("GET", "/v1/safety-alerts", params={"open_only": "true"}):
            path = f"/v1/safety-alerts/{alert['alert_id']}/acknowledge"
            taken = await self.act(path, {"note": TAKEN}, "alerts_acknowledged")
            if taken and alert["kind"] in HALTING and alert.get("technician_id"):
                # The store vouched for them (in the city, always): back to work.
                path = f"/v1/technicians/{alert['technician_id']}/status"
                reinstated = {"status": "active", "reason": CLEARED, "alert_id": alert["alert_id"]}
                await self.act(path, reinstated, "technicians_reinstated", method="PUT")

    async def act(
        self, path: str, body: dict[str, Any], done: str, *, key: str = "", method: str = "POST"
    ) -> bool:
        """Send `body`; counted as `done` (True) unless a 409 says it was done already (a
        retry of one that landed) or someone else did it first."""
        headers = {"Idempotency-Key": key} if key else {}
        answer = await self.ops.call(method, path, json=body, ok=(200, 409), headers=headers)
        if answer.status_code == 200:
            self.tally(done)
        return answer.status_code == 200
