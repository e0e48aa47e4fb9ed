"""Start the local Kafka and MongoDB of `infra.sh` from Python, for tests and benchmarks.

Each caller gets its own run directory and ports, so a test session or a
benchmark never touches the platform that `./dev up` started.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
SCRIPT = ROOT / "deploy" / "local" / "infra.sh"


@dataclass(frozen=True)
class Servers:
    kafka_bootstrap: str
    mongodb_uri: str
    source: str  # "environment", "testcontainers" or "local"


@contextlib.contextmanager
def local_servers(
    run_dir: Path, kafka_port: int, mongo_port: int, *, keep: bool = False
) -> Iterator[Servers]:
    """Start (or reuse) local servers; stop them afterwards unless they were already up."""
    env = {
        **os.environ,
        "DOORSTEP_RUN_DIR": str(run_dir.resolve()),
        "KAFKA_PORT": str(kafka_port),
        "MONGO_PORT": str(mongo_port),
        "PYTHON": sys.executable,
    }
    already = subprocess.run([str(SCRIPT), "status"], env=env, capture_output=True, check=False)
    subprocess.run([str(SCRIPT), "start"], env=env, check=True)
    try:
        yield Servers(
            f"127.0.0.1:{kafka_port}",
            f"mongodb://127.0.0.1:{mongo_port}/?replicaSet=rs0",
            "local",
        )
    finally:
        # Leave servers running that were running before us (a developer's quick re-runs).
        if already.returncode != 0 and not keep:
            subprocess.run([str(SCRIPT), "stop"], env=env, check=False)
