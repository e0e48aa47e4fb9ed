"""Verify sealed receipts offline: `verify receipt.json --keys keys.json`.

    verify receipt.json --keys keys.json           one sealed receipt
    verify chain.json --keys keys.json --chain     a store's receipts, oldest first

`keys.json` is what the API publishes: `{"key id": "base64url public key", ...}`.
Exit status 0 when everything verifies, 1 with the problems printed otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from services.payments.sealing import verify, verify_chain


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="verify", description="Verify sealed receipts offline")
    parser.add_argument("receipt", type=Path, help="a sealed receipt (or, with --chain, a list)")
    parser.add_argument("--keys", type=Path, required=True, help="published public keys (JSON)")
    parser.add_argument("--chain", action="store_true", help="the file holds a store's chain")
    args = parser.parse_args(argv)
    keys = json.loads(args.keys.read_text())
    data = json.loads(args.receipt.read_text())
    problems = verify_chain(data, keys) if args.chain else verify(data, keys)
    if problems:
        for problem in problems:
            print(f"NOT VALID: {problem}")
        return 1
    count = len(data) if args.chain else 1
    print(f"valid: {count} sealed receipt(s), signatures and chain intact")
    return 0


if __name__ == "__main__":
    sys.exit(main())
