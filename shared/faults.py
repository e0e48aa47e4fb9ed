"""Named crash points, so tests can kill a real process at an exact moment.

`DOORSTEP_CRASH_AT=outbox.after_commit` makes the process exit hard (as a
`kill -9` would) the first time it reaches that point. Unset, this is one
dictionary lookup: cheap enough to leave in production code.
"""

from __future__ import annotations

import os

CRASH_EXIT_CODE = 86


def crash_point(name: str) -> None:
    wanted = os.environ.get("DOORSTEP_CRASH_AT")
    if wanted and name in wanted.split(","):
        os._exit(CRASH_EXIT_CODE)
