"""Staff accounts: `python -m services.gateway.staff add EMAIL [--store STORE_ID]`,
`python -m services.gateway.staff remove EMAIL`.

Without `--store` the account is operations' (every store); with it, that partner
store's staff, who see the dashboard for their own technicians only.

`add` prints a new random password once (or takes one from standard input with
`--password-stdin`); only its scrypt hash is stored, in the gateway's database
named by the usual settings (`MONGODB_URI`, `DOORSTEP_DB_PREFIX`). Adding an
existing account resets its password. A reset and a removal both end the
account's sign-ins (its access tokens run out within 15 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys

from services.gateway.signin import add_staff, remove_staff
from shared.mongo import connect
from shared.settings import Settings


async def add(email: str, password: str, store_id: str | None) -> None:
    settings = Settings().model_copy(update={"service_name": "gateway"})
    client = connect(settings)
    try:
        await add_staff(client[settings.database_name], email, password, store_id)
    finally:
        await client.close()


async def remove(email: str) -> bool:
    settings = Settings().model_copy(update={"service_name": "gateway"})
    client = connect(settings)
    try:
        return await remove_staff(client[settings.database_name], email)
    finally:
        await client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="staff", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    adding = sub.add_parser("add", help="create a staff account (or reset its password)")
    adding.add_argument("email")
    adding.add_argument("--store", help="a partner store's staff member (else operations)")
    adding.add_argument("--password-stdin", action="store_true")
    removing = sub.add_parser("remove", help="remove a staff account and end its sign-ins")
    removing.add_argument("email")
    args = parser.parse_args(argv)
    if args.command == "remove":
        if not asyncio.run(remove(args.email)):
            print(f"{args.email.lower()}: no such staff account (its sign-ins are ended)")
            return 1
        print(f"{args.email.lower()}: removed; its sign-ins are ended")
        return 0
    password = sys.stdin.readline().strip() if args.password_stdin else secrets.token_urlsafe(12)
    if len(password) < 8:
        print("a password has at least 8 characters", file=sys.stderr)
        return 2
    try:
        asyncio.run(add(args.email, password, args.store))
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if not args.password_stdin:
        print(f"{args.email.lower()}: password {password} (shown once)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
