"""A throwaway event type for testing the backbone itself (not part of the catalogue)."""

from __future__ import annotations

from shared.events.envelope import EventPayload
from shared.events.registry import event


@event("probe.noted", version=1, stream="probe", key="probe_id")
class ProbeNoted(EventPayload):
    """Test-only: a handler counts it, or fails on purpose."""

    probe_id: str
    fail_times: int = 0  # the handler fails this many attempts, then succeeds (-1: always)
    waits_times: int = 0  # before that, it waits this many attempts for another event (NotYet)
    waits_for: str | None = None  # it waits (NotYet) until this ProbeCause has been handled
    # First, its transaction fails as if MongoDB were unreachable this many attempts (-1:
    # always); `database_down` says whether MongoDB stops answering meanwhile too (False: only
    # this transaction keeps failing, as on a hot document).
    unreachable_times: int = 0
    database_down: bool = True


@event("probe_cause.noted", version=1, stream="probe_cause", key="probe_id")
class ProbeCause(EventPayload):
    """Test-only, on a topic of its own: what a ProbeNoted may wait for."""

    probe_id: str
