"""Gateway's MongoDB collections: who may sign in, and how.

signing_keys    Ed25519 keys of the access tokens (a key ring: current signs, all verify)
accounts        a phone's account: its role and subject (customer or technician id)
otp_codes       the live one-time code per phone: its keyed digest, expiry, attempts left
sms_log         what was "sent" by SMS (the development sender writes here)
refresh_tokens  digests of refresh tokens with their family, expiry and revocation
api_keys        partner stores' keys: digest, store, scopes, revocation
notifications   what each user is told (technician assigned, on the way, receipt ready...)
booking_owners  which customer a booking belongs to (from booking.requested)
webhooks        stores' subscriptions: URL, event types, the secret that signs deliveries
webhook_deliveries  each event to each subscription, with every attempt (replayable)
ops_staff       staff who sign in by password: operations, or a store's (e-mail, scrypt hash)
keys            the secret that keys one-time code digests
migrations      one-off changes to stored rows, each done once (its name, when, how many)
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection

from shared.mongo import Database, Document, Versioned
from shared.time import utcnow

SIGNING_KEYS = "signing_keys"
ACCOUNTS = "accounts"
OTP_CODES = "otp_codes"
SMS_LOG = "sms_log"
REFRESH_TOKENS = "refresh_tokens"
API_KEYS = "api_keys"
OPS_STAFF = "ops_staff"
MIGRATIONS = "migrations"


async def ensure_indexes(db: Database) -> None:
    await db[ACCOUNTS].create_indexes(
        [IndexModel([("subject", ASCENDING), ("role", ASCENDING)], unique=True)]
    )
    await db[REFRESH_TOKENS].create_indexes(
        [
            IndexModel([("family", ASCENDING)]),
            IndexModel([("subject", ASCENDING)]),
            # Gone a day after they expire: no sign-in can use them by then.
            IndexModel([("expires_at", ASCENDING)], expireAfterSeconds=86400),
        ]
    )
    await db[API_KEYS].create_indexes([IndexModel([("store_id", ASCENDING)])])
    await db[SMS_LOG].create_indexes([IndexModel([("phone", ASCENDING), ("at", ASCENDING)])])
    await db[WEBHOOKS].create_indexes([IndexModel([("store_id", ASCENDING)])])
    await db[WEBHOOK_DELIVERIES].create_indexes(
        [IndexModel([("webhook_id", ASCENDING), ("created_at", ASCENDING)])]
    )
    await db[NOTIFICATIONS].create_indexes(
        [IndexModel([("recipient", ASCENDING), ("created_at", ASCENDING)])]
    )
    await unproven_technician_phones(db, utcnow())


# Stored as the enrolment of a technician's phone registered before enrolment codes with no
# sign-in on record since: no code matches it, and its time is over, so the next sign-in
# asks the store to register the phone again (which draws a code).
NONE_ISSUED = "none issued: registered before enrolment codes"
LEGACY_ENROLMENT = "accounts.enrolment"


async def unproven_technician_phones(db: Database, now: datetime) -> int:
    """Once: a technician's phone registered before enrolment codes has no `enrolment` field
    at all (every account written since has one, None once its code was used), and counted
    as signed in on, so a number the store mistyped made its owner the technician. One with
    no sign-in on record for this registration (no refresh token of its `sign_ins`: tokens
    last 30 days, and a replaced phone's name the old one's) has proven nothing: it waits
    for a code, like a phone registered now. How many."""
    if await db[MIGRATIONS].find_one({"_id": LEGACY_ENROLMENT}) is not None:
        return 0
    legacy = await (
        db[ACCOUNTS]
        .find(
            {"role": "technician", "enrolment": {"$exists": False}}, {"subject": 1, "sign_ins": 1}
        )
        .to_list()
    )
    signed_in = await (
        await db[REFRESH_TOKENS].aggregate(
            [
                {
                    "$match": {
                        "role": "technician",
                        "subject": {"$in": [a["subject"] for a in legacy]},
                    }
                },
                {
                    "$group": {
                        "_id": {
                            "subject": "$subject",
                            "sign_ins": {"$ifNull": ["$sign_ins", "$staff_sign_ins"]},
                        }
                    }
                },
            ]
        )
    ).to_list()
    used = {(g["_id"]["subject"], g["_id"].get("sign_ins")) for g in signed_in}
    unproven = [a["_id"] for a in legacy if (a["subject"], a.get("sign_ins")) not in used]
    changed = 0
    if unproven:
        marked = await db[ACCOUNTS].update_many(
            {"_id": {"$in": unproven}, "enrolment": {"$exists": False}},
            {
                "$set": {"enrolment": NONE_ISSUED, "enrol_by": now, "enrolment_wrong": 0},
                "$inc": {"version": 1},
            },
        )
        changed = marked.modified_count
    await db[MIGRATIONS].update_one(
        {"_id": LEGACY_ENROLMENT},
        {"$setOnInsert": {"done_at": now, "changed": changed}},
        upsert=True,
    )
    return changed


class Forbid(BaseModel):
    model_config = ConfigDict(extra="forbid")


KNOWN_ADDRESS_FOR = timedelta(days=30)
KNOWN_ADDRESSES = 5


class SignedInFrom(Forbid):
    address: str  # as the limits count it (a phone's: its keyed tag)
    at: datetime


class SignsIn(Forbid):
    """An account that remembers the last few addresses it signed in from: guesses and asks
    from elsewhere cannot keep its owner out from those."""

    signed_in_from: list[SignedInFrom] = Field(default_factory=list)

    def signed_in_lately_from(self, address: str, now: datetime) -> bool:
        return any(
            k.address == address and now - k.at < KNOWN_ADDRESS_FOR for k in self.signed_in_from
        )


async def remember_address(
    col: AsyncCollection[Document], account: Document, address: str, at: datetime
) -> None:
    """Put `address` last among the account's few (once), if `account` still matches."""
    others = {
        "$filter": {
            "input": {"$ifNull": ["$signed_in_from", []]},
            "cond": {"$ne": ["$$this.address", {"$literal": address}]},
        }
    }
    here = {"address": {"$literal": address}, "at": {"$literal": at}}
    last = {"$concatArrays": [others, [here]]}
    await col.update_one(
        account, [{"$set": {"signed_in_from": {"$slice": [last, -KNOWN_ADDRESSES]}}}]
    )


class Account(SignsIn):
    """A phone that may sign in, and as whom. `_id` is the phone. It remembers where its
    owner signed in lately (address tags): asks and guesses from elsewhere cannot keep them
    out from there."""

    phone: str
    role: str  # customer, technician
    subject: str
    store_id: str | None = None  # a technician's store
    created_at: datetime
    # A technician's sign-ins, named by every token they are issued: drawn again when their
    # store registers another phone or another store takes them on, and gone with the
    # account when the store takes it back, so the tokens issued before stop working.
    # (None: a customer, or a technician registered before this rule.)
    sign_ins: str | None = None
    # A technician's first sign-in on this phone also needs the code their store was shown
    # when it registered the phone (its keyed digest), before `enrol_by`: a number mistyped
    # by the store does not make its owner the technician, with the customers' addresses
    # that come with it. (None: signed in since, or a customer; NONE_ISSUED: registered
    # before this rule, with no sign-in on record since.)
    enrolment: str | None = None
    enrol_by: datetime | None = None
    enrolment_wrong: int = 0
    version: int = 0


class OtpCode(Forbid):
    phone: str
    digest: str
    expires_at: datetime
    # Wrong guesses left to every address but the one whose request drew this code,
    # together; each address also has its own allowance (`wrong`). 0 once the code is used.
    attempts_left: int
    used: bool = False
    drawn_for: str | None = None  # the address (keyed tag) whose request drew the code
    wrong: dict[str, int] = Field(default_factory=dict)  # wrong guesses, by address tag
    requested: list[datetime] = Field(default_factory=list)  # recent requests, for the limit
    requested_by: list[str] = Field(default_factory=list)  # and where from (address tags)
    # What the code is drawn from (with the gateway's key): asked for again while it is
    # live, the same code is texted again, so a stranger asking for one to your phone does
    # not void the code you are typing. (None: a code from before this rule.)
    nonce: str | None = None
    version: int = 0


class RefreshToken(Forbid):
    """`_id` is the token's digest; a family is one sign-in and all its rotations."""

    token_digest: str
    family: str
    role: str
    subject: str
    store_id: str | None = None
    expires_at: datetime
    # When the sign-in ends whatever its refreshes (None: a token from before this rule,
    # whose sign-in ends when it expires).
    session_ends_at: datetime | None = None
    # Its account's sign-ins (OpsStaff's, a technician's Account's); `staff_sign_ins` in
    # tokens stored before technicians' had them.
    sign_ins: str | None = Field(
        default=None, validation_alias=AliasChoices("sign_ins", "staff_sign_ins")
    )
    revoked_at: datetime | None = None
    replaced_by: str | None = None
    version: int = 0


class ApiKey(Forbid):
    key_id: str
    store_id: str
    scopes: list[str]
    secret_digest: str
    created_at: datetime
    revoked_at: datetime | None = None
    replaces: str | None = None
    version: int = 0


class OpsStaff(SignsIn):
    """Staff who sign in with a password: operations, or a partner store's own staff."""

    email: str
    password_hash: str  # scrypt, never leaves this collection
    store_id: str | None = None  # None: operations; else this store's staff (its board)
    created_at: datetime
    # Named by every access token of this account's sign-ins; a password reset draws a new
    # one, so the tokens issued before stop working at once, as they do once it is removed.
    # (None: an account from before this rule, whose tokens name none.)
    sign_ins: str | None = None
    # (A reset forgets the addresses it signed in from, with the rest.)
    version: int = 0


def of_technician(technician_id: str) -> Document:
    """What finds a technician's one account (unique by subject and role), and the refresh
    tokens of their sign-ins (which carry the same two fields)."""
    return {"role": "technician", "subject": technician_id}


class Accounts(Versioned[Account]):
    def __init__(self, db: Database) -> None:
        super().__init__(db, ACCOUNTS, Account, "phone")

    async def signed_in(self, account: Account, address: str, at: datetime) -> None:
        """Remember `address` (its tag) for this phone, unless the phone is someone else's
        since (registered again for another technician)."""
        mine = {
            "_id": account.phone,
            "subject": account.subject,
            "role": account.role,
            "sign_ins": account.sign_ins,
        }
        await remember_address(self.col, mine, address, at)


class OtpCodes(Versioned[OtpCode]):
    def __init__(self, db: Database) -> None:
        super().__init__(db, OTP_CODES, OtpCode, "phone")


class RefreshTokens(Versioned[RefreshToken]):
    def __init__(self, db: Database) -> None:
        super().__init__(db, REFRESH_TOKENS, RefreshToken, "token_digest")

    async def revoke(self, which: Document, at: datetime) -> int:
        """Revoke the live refresh tokens `which` matches (a sign-in's family, an account's
        every sign-in); how many."""
        ended = await self.col.update_many(
            {**which, "revoked_at": None}, {"$set": {"revoked_at": at}}
        )
        return ended.modified_count


class ApiKeys(Versioned[ApiKey]):
    def __init__(self, db: Database) -> None:
        super().__init__(db, API_KEYS, ApiKey, "key_id")


class Staff(Versioned[OpsStaff]):
    def __init__(self, db: Database) -> None:
        super().__init__(db, OPS_STAFF, OpsStaff, "email")

    async def signed_in(self, staff: OpsStaff, address: str, at: datetime) -> None:
        """Remember `address` among the account's last few, unless the account was reset
        or removed meanwhile (its new password was not what was shown here)."""
        await remember_address(
            self.col, {"_id": staff.email, "sign_ins": staff.sign_ins}, address, at
        )


# ------------------------------------------------------------- notifications --

NOTIFICATIONS = "notifications"
BOOKING_OWNERS = "booking_owners"


class Notification(Forbid):
    """What a user is told. `_id` comes from the event, so a redelivery tells nobody twice."""

    notification_id: str
    recipient: str  # "customer:cus_1", "technician:tech_1"
    kind: str
    title: str
    body: str
    booking_id: str | None = None
    data: dict[str, object] = Field(default_factory=dict)
    created_at: datetime
    read_at: datetime | None = None
    version: int = 0


class Notifications(Versioned[Notification]):
    def __init__(self, db: Database) -> None:
        super().__init__(db, NOTIFICATIONS, Notification, "notification_id")


# ------------------------------------------------------------------ webhooks --

WEBHOOKS = "webhooks"
WEBHOOK_DELIVERIES = "webhook_deliveries"


class Webhook(Forbid):
    webhook_id: str
    store_id: str
    url: str
    events: list[str]
    secret: str  # signs deliveries; shown to the store once, kept to sign
    created_at: datetime
    disabled_at: datetime | None = None
    version: int = 0


class Attempt(Forbid):
    at: datetime
    status: int | None = None  # the receiver's HTTP status, None when unreachable
    error: str = ""


class Delivery(Forbid):
    """One event to one subscription; its id makes it once per event id."""

    delivery_id: str
    webhook_id: str
    store_id: str
    event_id: str
    event_type: str
    body: str  # the exact JSON sent (and re-sent on a replay)
    status: str = "pending"  # pending, delivered, failed
    attempts: list[Attempt] = Field(default_factory=list)
    created_at: datetime
    delivered_at: datetime | None = None
    version: int = 0


class Webhooks(Versioned[Webhook]):
    def __init__(self, db: Database) -> None:
        super().__init__(db, WEBHOOKS, Webhook, "webhook_id")


class Deliveries(Versioned[Delivery]):
    def __init__(self, db: Database) -> None:
        super().__init__(db, WEBHOOK_DELIVERIES, Delivery, "delivery_id")
