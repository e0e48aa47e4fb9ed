"""Initiate the local single-node replica set (once) and wait for a writable primary."""

from __future__ import annotations

import sys
import time

from pymongo import MongoClient
from pymongo.errors import OperationFailure, PyMongoError

ALREADY_INITIALIZED = 23


def main(port: int, timeout_s: float = 60.0) -> None:
    client: MongoClient[dict[str, object]] = MongoClient(
        f"mongodb://127.0.0.1:{port}/?directConnection=true", serverSelectionTimeoutMS=2000
    )
    deadline = time.monotonic() + timeout_s
    initiated = False
    while time.monotonic() < deadline:
        try:
            if not initiated:
                try:
                    client.admin.command(
                        "replSetInitiate",
                        {"_id": "rs0", "members": [{"_id": 0, "host": f"127.0.0.1:{port}"}]},
                    )
                except OperationFailure as exc:
                    if exc.code != ALREADY_INITIALIZED:
                        raise
                initiated = True
            if client.admin.command("hello").get("isWritablePrimary"):
                return
        except PyMongoError as exc:
            last = exc
            del last
        time.sleep(0.1)
    sys.exit(f"mongod on port {port} did not become a writable primary in {timeout_s:.0f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]))
