"""Events the gateway turns into client notifications (none yet)."""

from __future__ import annotations

from shared.consumer import Handlers

handlers = Handlers()
