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
