"""Sign-in at the edge: phone and one-time code (customers, technicians), e-mail and password
(operations), refresh-token rotation with reuse detection, partner stores' API keys."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Annotated, Protocol

from fastapi import APIRouter, Depends, Query, Request, Response, status
from pydantic import Field
from pymongo.errors import DuplicateKeyError

from services.gateway.api import upstream
from services.gateway.limits import RateLimiter
from services.gateway.security import (
    SIGNED_IN,
    STAFF,
    EdgeActor,
    SignInChecks,
    account_sign_ins,
    client_address,
    client_network,
    hash_password,
    password_checked,
    sign_in_ended,
    signin_limited,
    token_keys,
)
from services.gateway.storage import (
    NONE_ISSUED,
    SMS_LOG,
    Account,
    Accounts,
    ApiKey,
    ApiKeys,
    OpsStaff,
    OtpCode,
    OtpCodes,
    RefreshToken,
    RefreshTokens,
    Staff,
    of_technician,
)
from services.gateway.tokens import (
    SigningKey,
    address_tag,
    code_digest,
    code_of,
    digest,
    enrolment_digest,
    issue_access,
    new_api_key,
    new_enrolment_code,
    new_nonce,
    new_secret,
    same,
)
from services.gateway.upstream import UpstreamError
from shared.auth import Actor, Role
from shared.errors import (
    Conflict,
    Forbidden,
    NotFound,
    TooManyRequests,
    Unauthenticated,
    Unprocessable,
    VersionMismatch,
)
from shared.mongo import Database, Session
from shared.outbox import Transaction
from shared.privacy import Phone
from shared.schema import Forbid, PathId
from shared.secrets import service_secret
from shared.service import Runtime, RuntimeDep
from shared.time import utcnow

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1")
# Sign-in calls, limited per client address (they carry no principal yet).
limited = [Depends(signin_limited)]

SCOPES = ("read", "write")


class SmsSender(Protocol):
    """Where one-time codes go; a real SMS provider plugs in behind this."""

    async def send(self, phone: str, text: str) -> None: ...


class LogSender:
    """Development: the 'SMS' is written to the gateway's sms_log (GET /v1/dev/sms)."""

    def __init__(self, db: Database) -> None:
        self._col = db[SMS_LOG]

    async def send(self, phone: str, text: str) -> None:
        await self._col.insert_one({"phone": phone, "text": text, "at": utcnow()})


def sender(runtime: Runtime) -> SmsSender:
    return LogSender(runtime.db)


# ------------------------------------------------------------------- tokens --


class Tokens(Forbid):
    access_token: str
    token_type: str = "Bearer"  # noqa: S105 - the OAuth token type, not a secret
    expires_in: int
    refresh_token: str
    role: Role
    subject: str


STAFF_ROLES = tuple(role.value for role in STAFF)  # refresh tokens of these: staff's sign-ins


async def issue(
    runtime: Runtime,
    actor: Actor,
    of: RefreshToken | None = None,
    sign_ins: str | None = None,
) -> Tokens:
    """Tokens for a new sign-in, or (`of` its last refresh token) for the next of a sign-in,
    which ends when it was due to, however often it is refreshed. A staff member's or a
    technician's tokens name their account's sign-ins as they were when the password or the
    code was checked (`sign_ins`), so a reset or a take-back meanwhile ends them too."""
    now = utcnow()
    settings = runtime.settings
    if of is None:
        staff = actor.role.value in STAFF_ROLES
        lasts_s = settings.staff_session_max_s if staff else settings.session_max_s
        family, session_ends_at = uuid.uuid4().hex, now + timedelta(seconds=lasts_s)
    else:  # a token from before sign-ins had an end: its sign-in ends when it expires
        family, session_ends_at = of.family, of.session_ends_at or of.expires_at
    key = await token_keys(runtime.db, settings).current()
    access = issue_access(
        SigningKey(key.key_id, key.private),
        actor,
        now,
        timedelta(seconds=settings.access_token_ttl_s),
        sign_ins,
    )
    refresh = new_secret()
    await RefreshTokens(runtime.db).insert(
        RefreshToken(
            token_digest=digest(refresh),
            family=family,
            role=actor.role.value,
            subject=actor.subject,
            store_id=actor.store_id,
            expires_at=min(now + timedelta(seconds=settings.refresh_token_ttl_s), session_ends_at),
            session_ends_at=session_ends_at,
            sign_ins=sign_ins,
        )
    )
    return Tokens(
        access_token=access,
        expires_in=settings.access_token_ttl_s,
        refresh_token=refresh,
        role=actor.role,
        subject=actor.subject,
    )


class OtpIn(Forbid):
    phone: Phone
    role: Role = Role.CUSTOMER


class OtpOut(Forbid):
    sent: bool = True
    expires_in: int


@router.post(
    "/auth/otp",
    tags=["sign-in"],
    dependencies=limited,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Send a one-time sign-in code to a phone",
)
async def request_code(
    body: OtpIn, runtime: RuntimeDep, request: Request, response: Response
) -> OtpOut:
    if body.role not in (Role.CUSTOMER, Role.TECHNICIAN):
        raise Forbidden("phone sign-in is for customers and technicians")
    settings, now = runtime.settings, utcnow()
    codes = OtpCodes(runtime.db)
    current = await codes.get(body.phone)
    key = await service_secret(runtime.db, "otp", settings.otp_secret)
    address = client_address(request)
    here = address_tag(key, address)
    # The last hour's asks for this phone, each with where it came from. Counted per address
    # first, so that strangers asking for your phone do not use up your own asks; and all
    # together, which bounds the texts a phone can be sent.
    recent = [(t, by) for t, by in _asks(current) if now - t < timedelta(hours=1)]
    account = await Accounts(runtime.db).get(body.phone)
    limits = [([t for t, by in recent if by == here], settings.otp_requests_per_hour, "from here")]
    if account is None or not account.signed_in_lately_from(here, now):
        # From where its owner signed in lately, strangers' asks (from however many
        # addresses) do not stop theirs: those count only against this address's own.
        limits.append(([t for t, _ in recent], settings.otp_requests_per_hour_all, "in all"))
    for mine, limit, what in limits:
        if len(mine) >= limit:
            retry = int((min(mine) + timedelta(hours=1) - now).total_seconds()) + 1
            raise TooManyRequests(
                f"too many codes asked for this phone {what}; wait", retry_after=retry
            )
    # A technician's phone must be registered by their store; say nothing either way. When
    # no code is sent, nothing is stored either: the phone's own code and its hourly count
    # stay as they were, so asking as a "technician" cannot lock a customer out.
    if body.role is Role.TECHNICIAN and (account is None or account.role != "technician"):
        return OtpOut(expires_in=settings.otp_ttl_s)
    texts = _take_texts(request, address)
    if current is not None and current.nonce and still_live(current, now):
        # Asked again (the text did not come; or a stranger asked for this phone): the same
        # code again, with what is left of its time and tries, so the one in hand still works.
        # The asker gets no tries of their own: anyone may ask for anyone's phone.
        fresh = current.model_copy(update=_asked(recent, now, here))
    else:
        nonce = new_nonce()
        fresh = OtpCode(
            phone=body.phone,
            digest=code_digest(key, body.phone, code_of(key, body.phone, nonce)),
            expires_at=now + timedelta(seconds=settings.otp_ttl_s),
            attempts_left=settings.otp_attempts_elsewhere,
            drawn_for=here,
            **_asked(recent, now, here),
            nonce=nonce,
            version=current.version if current else 0,
        )
    code = code_of(key, body.phone, fresh.nonce or "")
    try:
        if current is None:
            if not await codes.insert_if_absent(fresh):
                raise VersionMismatch(body.phone)
        else:
            await codes.save(fresh)
    except VersionMismatch:  # a twin request's code went first; this one sends nothing
        _give_back(texts)
        raise TooManyRequests(
            "a code was sent to this phone just now: use it, or ask again in a moment",
            retry_after=1,
        ) from None
    await sender(runtime).send(body.phone, f"Your Doorstep code is {code}")
    return OtpOut(expires_in=int((fresh.expires_at - now).total_seconds()))


def _take_texts(request: Request, address: str) -> list[tuple[RateLimiter, str]]:
    """One text from each allowance it counts against, or none (429) when one is used up:
    the address's first, so a few addresses cannot use up the platform's (which bounds what
    a flood from many can cost) and stop every sign-in; then its IPv6 site's, so one site
    cannot take a fresh /64 for each ask; then the platform's."""
    state = request.app.state
    wanted = [(state.sms_per_address, address, "too many codes asked from this address")]
    network = client_network(request)
    if network is not None:
        wanted.append((state.sms_per_network, network, "too many codes asked from this network"))
    wanted.append(
        (state.sms_limiter, "all", "the platform is texting too many codes right now; try again")
    )
    taken: list[tuple[RateLimiter, str]] = []
    try:
        for limiter, key, what in wanted:
            limiter.check(key, what=what)
            taken.append((limiter, key))
    except TooManyRequests:
        _give_back(taken)  # nothing is sent
        raise
    return taken


def _give_back(texts: list[tuple[RateLimiter, str]]) -> None:
    for limiter, key in texts:
        limiter.give_back(key)


def _asks(otp: OtpCode | None) -> list[tuple[datetime, str]]:
    """The phone's recent asks, each with where it came from ("": kept before that was)."""
    if otp is None:
        return []
    by = [*otp.requested_by, *[""] * (len(otp.requested) - len(otp.requested_by))]
    return list(zip(otp.requested, by, strict=True))


def _asked(recent: list[tuple[datetime, str]], now: datetime, here: str) -> dict[str, object]:
    """The asks to keep: the last hour's, and this one."""
    return {
        "requested": [*(t for t, _ in recent), now],
        "requested_by": [*(by for _, by in recent), here],
    }


# A code asked for again with less time than this left is not sent again: a new one is.
RESEND_WITHIN = timedelta(seconds=60)


def still_live(otp: OtpCode, now: datetime) -> bool:
    """Not used, and not about to expire. A code strangers have guessed at for all their
    tries is still live for the address that drew it; and one an address guessed wrong at
    too often stays barred to that address until it runs out, rather than a new one being
    drawn (which would void the code someone else holds)."""
    # (A code from before addresses were kept was drawn for nobody: live while tries are left.)
    tried_out = otp.attempts_left <= 0 and otp.drawn_for is None
    return not otp.used and not tried_out and now < otp.expires_at - RESEND_WITHIN


# Where a code's wrong guesses from its owner's recent addresses are counted together (an
# address's own tag is a hex digest: never this).
KNOWN = "known"


class CodeIn(Forbid):
    phone: Phone
    code: str = Field(pattern=r"^[0-9]{6}$")
    enrolment_code: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9]{4}[- ]?[A-Za-z0-9]{4}$",
        description="A technician's first sign-in on a phone: the code their store was "
        "given when it registered the phone",
    )


@router.post(
    "/auth/token",
    tags=["sign-in"],
    dependencies=limited,
    summary="Exchange a one-time code for tokens",
)
async def exchange_code(body: CodeIn, runtime: RuntimeDep, request: Request) -> Tokens:
    codes, now, settings = OtpCodes(runtime.db), utcnow(), runtime.settings
    otp = await codes.get(body.phone)
    if otp is None or otp.used or now >= otp.expires_at:
        raise Unauthenticated("no valid code for this phone: ask for a new one")
    key = await service_secret(runtime.db, "otp", settings.otp_secret)
    here = address_tag(key, client_address(request))
    accounts = Accounts(runtime.db)
    account = await accounts.get(body.phone)
    known = account is not None and account.signed_in_lately_from(here, now)
    tries = _tries_left(otp, here, known, settings.otp_attempts)
    if tries <= 0:
        wait = max(int((otp.expires_at - RESEND_WITHIN - now).total_seconds()), 0) + 1
        raise Unauthenticated(
            f"too many wrong codes for this phone from here: ask for a new one in {wait} s"
        )
    if not same(otp.digest, code_digest(key, body.phone, body.code)):
        _count_wrong(otp, here, known)
        await codes.save(otp)
        raise Unauthenticated(f"wrong code ({tries - 1} attempts left)")
    enrolling = account is not None and account.enrolment is not None
    if account is not None and enrolling:
        _may_enrol(account, body, now)  # nothing is used up when the code is missing
    otp.used, otp.attempts_left = True, 0  # one sign-in per code
    try:
        await codes.save(otp)
    except VersionMismatch:  # a twin call used it, or a wrong guess came meanwhile
        raise Conflict("this code was tried meanwhile: try it again") from None
    if account is not None and enrolling:
        account = await _enrol(runtime.db, account, body, key=key, now=now)
    if account is None:
        account = Account(
            phone=body.phone,
            role=Role.CUSTOMER.value,
            subject=f"cus_{uuid.uuid4().hex[:16]}",
            created_at=now,
        )
        if not await accounts.insert_if_absent(account):
            # Made meanwhile (a twin call; a store registering this phone): that one it is,
            # unless it waits for its technician's enrolment code, which this call lacks.
            account = await accounts.get(body.phone)
            if account is None:  # and removed again since
                raise Conflict("this phone's account changed meanwhile; sign in again")
            if account.enrolment is not None:
                raise Unauthenticated(
                    "this phone was registered for a technician meanwhile: ask for a new "
                    "code, and sign in with the enrolment code their store was given"
                )
    await accounts.signed_in(account, here, now)
    actor = Actor(role=Role(account.role), subject=account.subject, store_id=account.store_id)
    return await issue(runtime, actor, sign_ins=account.sign_ins)


# The address whose request drew a code has tries of its own, the addresses its owner signed
# in from lately one allowance together (one may be a carrier's shared exit), and every other
# address shares another: strangers guessing cannot burn the code for its owner. (A code
# from before addresses were kept was drawn for nobody: all share what is left.)
def _tries_left(otp: OtpCode, here: str, known: bool, attempts: int) -> int:
    tries = attempts - otp.wrong.get(here, 0)
    if here == otp.drawn_for:
        return tries
    if known:
        return min(tries, attempts - otp.wrong.get(KNOWN, 0))
    return min(tries, otp.attempts_left)


def _count_wrong(otp: OtpCode, here: str, known: bool) -> None:
    otp.wrong[here] = otp.wrong.get(here, 0) + 1
    if here == otp.drawn_for:
        return
    if known:
        otp.wrong[KNOWN] = otp.wrong.get(KNOWN, 0) + 1
    else:
        otp.attempts_left -= 1


def _may_enrol(account: Account, body: CodeIn, now: datetime) -> None:
    """A technician's first sign-in on a phone their store registered: the store's
    enrolment code must come with the phone's own, and still be good. Without it nothing is
    used up (the phone's owner may not know they need it)."""
    if account.enrolment == NONE_ISSUED:
        raise Unauthenticated(
            "this phone was registered for a technician before enrolment codes, with no "
            "sign-in on it on record since: the technician's store registers it again for "
            "a code"
        )
    if account.enrol_by is None or now >= account.enrol_by:
        raise Unauthenticated(
            "this phone's enrolment code has run out: the technician's store registers the "
            "phone again for a new one"
        )
    if body.enrolment_code is None:
        raise Unauthenticated(
            "the first sign-in on this phone is a technician's, and needs the enrolment "
            "code their store was given (enrolment_code); if you are not their technician, "
            "call operations"
        )


async def _enrol(
    db: Database, account: Account, body: CodeIn, *, key: bytes, now: datetime
) -> Account:
    """The phone's own code is right (and used up): so must the store's code be. A wrong one
    counts against ENROLMENT_TRIES."""
    typed = enrolment_digest(key, body.phone, body.enrolment_code or "")
    if not same(account.enrolment or "", typed):
        wrong = account.enrolment_wrong + 1
        void = {"enrol_by": now} if wrong >= ENROLMENT_TRIES else {}
        await _registration_kept(db, account, {"enrolment_wrong": wrong, **void})
        left = ENROLMENT_TRIES - wrong
        raise Unauthenticated(
            f"wrong enrolment code; ask for a new sign-in code ({left} tries left)"
            if left > 0
            else "wrong enrolment code, too often: the store registers the phone again"
        )
    enrolled = {"enrolment": None, "enrol_by": None, "enrolment_wrong": 0}
    await _registration_kept(db, account, enrolled)
    return account.model_copy(update=enrolled)


async def _registration_kept(db: Database, account: Account, fields: Mapping[str, object]) -> None:
    """Change the account as read, only if it is still the registration read: a phone's
    account is made anew (version 0) when a store registers it again, and its version alone
    would let a stale write undo that registration (its store, its new code)."""
    as_read = {
        "_id": account.phone,
        "version": account.version,
        "sign_ins": account.sign_ins,
        "store_id": account.store_id,
        "enrolment": account.enrolment,
    }
    changed = await Accounts(db).col.update_one(as_read, {"$set": fields, "$inc": {"version": 1}})
    if changed.matched_count != 1:
        raise Conflict("this phone's registration changed meanwhile: ask for a new code")


class RefreshIn(Forbid):
    refresh_token: str = Field(min_length=20, max_length=200)


@router.post(
    "/auth/refresh",
    tags=["sign-in"],
    dependencies=limited,
    summary="New tokens for a refresh token (each works once; reuse revokes the sign-in)",
)
async def refresh(body: RefreshIn, runtime: RuntimeDep) -> Tokens:
    tokens, now = RefreshTokens(runtime.db), utcnow()
    stored = await tokens.get(digest(body.refresh_token))
    if stored is None:
        raise Unauthenticated("unknown refresh token")
    if stored.revoked_at is not None:
        # A used or revoked token shown again: someone copied it. End the whole sign-in.
        await tokens.revoke({"family": stored.family}, now)
        log.warning("refresh token reused; sign-in family %s revoked", stored.family)
        raise Unauthenticated("this refresh token was already used or revoked; sign in again")
    if now >= stored.expires_at:
        if stored.session_ends_at is not None and stored.expires_at >= stored.session_ends_at:
            raise Unauthenticated("this sign-in has reached its end; sign in again")
        raise Unauthenticated("the refresh token has expired; sign in again")
    role = Role(stored.role)
    if role in SIGNED_IN:
        there, sign_ins = await account_sign_ins(runtime.db, role, stored.subject)
        if not there or sign_ins != stored.sign_ins:
            raise Unauthenticated(sign_in_ended(role))  # reset, taken back or removed since
    stored.revoked_at = now
    await tokens.save(stored)
    actor = Actor(role=role, subject=stored.subject, store_id=stored.store_id)
    return await issue(runtime, actor, of=stored, sign_ins=stored.sign_ins)


@router.post(
    "/auth/logout",
    tags=["sign-in"],
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=limited,
    summary="Revoke a refresh token and every token of its sign-in",
)
async def logout(body: RefreshIn, runtime: RuntimeDep) -> Response:
    tokens = RefreshTokens(runtime.db)
    stored = await tokens.get(digest(body.refresh_token))
    if stored is not None:
        await tokens.revoke({"family": stored.family}, utcnow())
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# Staff e-mails are plain ASCII: one travels to the services as the caller's id, in a
# header, and must read the same at both ends.
STAFF_EMAIL = r"^[!-?A-~]+@[!-?A-~]+$"


class OpsIn(Forbid):
    email: str = Field(min_length=3, max_length=200, pattern=STAFF_EMAIL)
    password: str = Field(min_length=8, max_length=200)


@router.post(
    "/auth/ops",
    tags=["sign-in"],
    dependencies=limited,
    summary="Staff sign in: operations, or a partner store's staff (their store's board)",
)
async def ops_sign_in(body: OpsIn, runtime: RuntimeDep, request: Request) -> Tokens:
    email, address, now = body.email.lower(), client_address(request), utcnow()
    staff_accounts = Staff(runtime.db)
    staff = await staff_accounts.get(email)
    # Guesses are counted per account from this address, and per account from every address
    # it has not signed in from lately (spread over many, each would stay under its own
    # limit): guesses from elsewhere cannot keep the staff member out. Each try takes its
    # token first and a success gives it back, so tries at once are bounded as well.
    # (Unknown e-mails are counted alike: no tell.)
    state = request.app.state
    limits: list[tuple[RateLimiter, str, str]] = [
        (state.staff_failures_here, f"{email} {address}", "from this address"),
    ]
    if staff is not None and staff.signed_in_lately_from(address, now):
        # The account's own addresses share one allowance too: one of them may be a shared
        # exit (a carrier's, a café's), and each must not bring the account a fresh one.
        limits.append((state.staff_failures, f"{email} known", "from its usual addresses"))
    else:
        limits.append((state.staff_failures, email, "from addresses it has not signed in from"))
    taken: list[tuple[RateLimiter, str]] = []
    try:
        for limiter, key, where in limits:
            limiter.check(key, what=f"too many wrong passwords for this account {where}; wait")
            taken.append((limiter, key))
    except TooManyRequests:
        for limiter, key in taken:
            limiter.give_back(key)
        raise
    if not await password_checked(body.password, staff.password_hash if staff else None):
        raise Unauthenticated("wrong e-mail or password")
    assert staff is not None
    for limiter, key in taken:
        limiter.give_back(key)
    await staff_accounts.signed_in(staff, address, now)
    if staff.store_id:
        actor = Actor(role=Role.STORE, subject=staff.email, store_id=staff.store_id)
    else:
        actor = Actor(role=Role.OPS, subject=staff.email)
    return await issue(runtime, actor, sign_ins=staff.sign_ins)


async def add_staff(db: Database, email: str, password: str, store_id: str | None = None) -> None:
    """Create or reset a staff account (the `staff` command and tests use this). A reset
    ends the account's sign-ins: whoever knew the old password is signed out."""
    if not re.fullmatch(STAFF_EMAIL, email) or len(email) > 200:
        raise ValueError(f"{email!r} is not a staff e-mail (plain ASCII, one @)")
    staff = Staff(db)
    account = OpsStaff(
        email=email.lower(),
        password_hash=hash_password(password),
        store_id=store_id,
        created_at=utcnow(),
        sign_ins=uuid.uuid4().hex,  # the access tokens issued before stop working
    )
    await staff.col.replace_one({"_id": account.email}, staff.to_doc(account), upsert=True)
    await end_staff_sign_ins(db, account.email)


async def remove_staff(db: Database, email: str) -> bool:
    """Remove a staff account and end its sign-ins; False if there was none."""
    removed = await Staff(db).col.delete_one({"_id": email.lower()})
    await end_staff_sign_ins(db, email.lower())
    return removed.deleted_count == 1


async def end_staff_sign_ins(db: Database, email: str) -> int:
    """Revoke every refresh token of this staff member's sign-ins. (Their access tokens name
    the account's sign-ins, which the caller has just replaced or removed: the gateway
    refuses them from now on, and ends their live streams.)"""
    return await RefreshTokens(db).revoke(
        {"subject": email, "role": {"$in": list(STAFF_ROLES)}}, utcnow()
    )


class SigningKeysOut(Forbid):
    keys: dict[str, str] = Field(description="key id: Ed25519 public key (base64url)")
    algorithm: str = "EdDSA"


@router.get(
    "/auth/keys",
    tags=["sign-in"],
    dependencies=limited,
    summary="Public keys that verify access tokens",
)
async def signing_keys(runtime: RuntimeDep) -> SigningKeysOut:
    ring = token_keys(runtime.db, runtime.settings)
    await ring.current()  # the first key exists once anybody asks
    return SigningKeysOut(keys=await ring.published())


# ------------------------------------------------------------ technicians --


class TechnicianAccountIn(Forbid):
    technician_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    phone: Phone
    store_id: str = Field(min_length=1, max_length=64)


class TechnicianAccountOut(Forbid):
    technician_id: str
    phone: str = Field("registered", description="Never the number: only that it is registered")
    enrolment_code: str | None = Field(
        description="Shown once: the store hands it to its technician, whose first sign-in "
        "on this phone needs it (`enrolment_code` on `POST /v1/auth/token`). None when the "
        "technician has signed in on this phone already."
    )
    enrol_by: datetime | None = Field(description="The code works until then")


# How long a store's enrolment code works, and how many wrong ones void it (each wrong one
# also uses up the one-time code it came with, so guesses cost texts too).
ENROLMENT_VALID = timedelta(days=7)
ENROLMENT_TRIES = 5


@router.post(
    "/technician-accounts",
    tags=["sign-in"],
    status_code=status.HTTP_201_CREATED,
    summary="A store (or operations) lets its technician sign in with their phone",
)
async def add_technician_account(
    body: TechnicianAccountIn, request: Request, runtime: RuntimeDep, actor: EdgeActor
) -> TechnicianAccountOut:
    """One phone a technician. Registering another (a lost phone), or the technician at the
    store they moved to, ends every sign-in before it; the same registration again changes
    nothing. A phone the technician has not signed in on yet comes with an enrolment code,
    which their first sign-in on it needs: the same registration again draws a new one."""
    if not actor.speaks_for_store(body.store_id):
        raise Forbidden("a store registers only its own technicians")
    # The sign-in is for a technician dispatch has on file as this store's: else a store could
    # sign in as another store's technician (or claim an id before it is filed) and see that
    # technician's offers, customers' addresses and file. Dispatch answers only a caller who
    # may read the file.
    filed = await upstream(request).call(
        "dispatch", "GET", f"/technicians/{body.technician_id}", headers=actor.headers()
    )
    if filed.status_code == 404:
        raise Unprocessable(
            f"no technician {body.technician_id} on file: file them first "
            f"(PUT /v1/technicians/{body.technician_id})",
            field="technician_id",
        )
    if filed.status_code != 200:
        raise UpstreamError.from_response(filed)
    if filed.json().get("store_id") != body.store_id:
        raise Forbidden(
            f"technician {body.technician_id} is not on file as {body.store_id}'s",
            field="technician_id",
        )
    accounts = Accounts(runtime.db)
    key = await service_secret(runtime.db, "otp", runtime.settings.otp_secret)
    code, now = new_enrolment_code(), utcnow()
    pending = {
        "enrolment": enrolment_digest(key, body.phone, code),
        "enrol_by": now + ENROLMENT_VALID,
        "enrolment_wrong": 0,
    }

    async def register(tx: Transaction) -> tuple[str | None, bool]:
        """The phone is theirs now; their new sign-ins when those before end (another phone
        or another store), and whether it waits for the enrolment code. In one transaction:
        the phone they had is let go of first (one phone a technician), and a registration
        racing this one fails it rather than interleave."""
        existing = await accounts.get(body.phone, session=tx.session)
        if existing is not None and (
            existing.subject != body.technician_id or existing.role != Role.TECHNICIAN.value
        ):
            # A customer's own phone (say) is never taken over by a technician filed under
            # their id.
            raise Conflict("this phone belongs to another account", field="phone")
        if existing is not None and existing.store_id == body.store_id:
            if existing.enrolment is None:
                return None, False  # registered as it was: their sign-ins go on
            # Not signed in on yet, and the store asks again (the code was lost): a new one.
            await accounts.save(existing.model_copy(update=pending), session=tx.session)
            return None, True
        before = await accounts.col.find_one(of_technician(body.technician_id), session=tx.session)
        if before is not None:
            await accounts.col.delete_one({"_id": before["_id"]}, session=tx.session)
        # The same phone at the store they moved to was proven theirs already: no new code.
        proven = existing is not None and existing.enrolment is None
        account = Account(
            phone=body.phone,
            role=Role.TECHNICIAN.value,
            subject=body.technician_id,
            store_id=body.store_id,
            created_at=now,
            sign_ins=uuid.uuid4().hex,
            **({} if proven else pending),
        )
        await accounts.insert(account, session=tx.session)
        return (account.sign_ins if before is not None else None), not proven

    try:
        moved, enrolling = await runtime.uow.run(register, name="register technician phone")
    except DuplicateKeyError:
        raise Conflict(
            "this technician's phone was registered by another call meanwhile; try again",
            field="phone",
        ) from None
    if moved is not None:
        # A lost phone, or a technician who changed stores: whoever holds the phone they had,
        # or their sign-in as the store they left, is signed out (the new phone, signed in
        # already maybe, is not).
        await end_technician_sign_ins(request, runtime.db, body.technician_id, keep=moved)
    return TechnicianAccountOut(
        technician_id=body.technician_id,
        enrolment_code=code if enrolling else None,
        enrol_by=pending["enrol_by"] if enrolling else None,
    )


@router.delete(
    "/technician-accounts/{technician_id}",
    tags=["sign-in"],
    status_code=status.HTTP_204_NO_CONTENT,
    summary="A store (or operations) takes back its technician's sign-in: it ends at once",
)
async def remove_technician_account(
    technician_id: PathId, request: Request, runtime: RuntimeDep, actor: EdgeActor
) -> Response:
    """For a technician who leaves the store: their phone no longer signs in as them, and
    their sign-ins end, access tokens already out and live streams included."""
    accounts = Accounts(runtime.db)
    theirs = of_technician(technician_id)
    found = await accounts.col.find_one(theirs)
    if found is None:
        raise NotFound(f"technician {technician_id} has no sign-in")
    if not actor.speaks_for_store(found.get("store_id")):
        raise Forbidden("a store takes back only its own technicians' sign-ins")
    # Only the account as read: one another store registered meanwhile is not this store's.
    as_read = {**theirs, "_id": found["_id"], "store_id": found.get("store_id")}
    removed = await accounts.col.delete_one({**as_read, "sign_ins": found.get("sign_ins")})
    if removed.deleted_count != 1:
        raise Conflict(f"technician {technician_id}'s sign-in changed meanwhile: look again")
    await end_technician_sign_ins(request, runtime.db, technician_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


async def end_technician_sign_ins(
    request: Request, db: Database, technician_id: str, keep: str | None = None
) -> None:
    """Their refresh tokens are revoked (but those of the sign-ins `keep`); their access
    tokens name sign-ins that are gone or drawn again, which this gateway knows at once
    (another replica within its recheck)."""
    checks: SignInChecks = request.app.state.sign_in_checks
    checks.forget(technician_id)
    theirs = of_technician(technician_id)
    if keep is not None:
        theirs["sign_ins"] = {"$ne": keep}
    await RefreshTokens(db).revoke(theirs, utcnow())


# ---------------------------------------------------------------- API keys --


class ApiKeyIn(Forbid):
    scopes: list[str] = Field(default=["read", "write"], min_length=1, max_length=2)


class ApiKeyOut(Forbid):
    key_id: str
    store_id: str
    scopes: list[str]
    api_key: str | None = Field(
        default=None, description="Shown once, now; only its digest is kept"
    )


async def _new_key(
    runtime: Runtime,
    store_id: str,
    scopes: list[str],
    replaces: str | None,
    session: Session = None,
) -> ApiKeyOut:
    if any(s not in SCOPES for s in scopes):
        raise Forbidden(f"scopes are {', '.join(SCOPES)}")
    key_id, secret, whole = new_api_key()
    await ApiKeys(runtime.db).insert(
        ApiKey(
            key_id=key_id,
            store_id=store_id,
            scopes=sorted(set(scopes)),
            secret_digest=digest(secret),
            created_at=utcnow(),
            replaces=replaces,
        ),
        session=session,
    )
    return ApiKeyOut(key_id=key_id, store_id=store_id, scopes=sorted(set(scopes)), api_key=whole)


@router.post(
    "/stores/{store_id}/api-keys",
    tags=["api keys"],
    status_code=status.HTTP_201_CREATED,
    summary="Operations issue a store an API key (shown once)",
)
async def create_api_key(
    store_id: PathId, body: ApiKeyIn, runtime: RuntimeDep, actor: EdgeActor
) -> ApiKeyOut:
    actor.require(Role.OPS)
    return await _new_key(runtime, store_id, body.scopes, None)


async def _own_key(runtime: Runtime, actor: Actor, key_id: str) -> ApiKey:
    key = await ApiKeys(runtime.db).get(key_id)
    if key is None:
        raise NotFound(f"API key {key_id} does not exist")
    if not actor.speaks_for_store(key.store_id):
        raise Forbidden("a store manages only its own keys")
    return key


@router.post(
    "/api-keys/{key_id}/rotate",
    tags=["api keys"],
    status_code=status.HTTP_201_CREATED,
    summary="A new key for the same store and scopes; the old one stops working",
)
async def rotate_api_key(key_id: PathId, runtime: RuntimeDep, actor: EdgeActor) -> ApiKeyOut:
    await _own_key(runtime, actor, key_id)
    keys = ApiKeys(runtime.db)

    async def rotate(tx: Transaction) -> ApiKeyOut:
        """The old key revoked and the new one made together: of two rotations at once,
        one makes a key and the other 409, not a second live key nobody was shown."""
        key = await keys.get(key_id, session=tx.session)
        if key is None or key.revoked_at is not None:
            raise Conflict("this key is revoked already")
        await keys.save(key.model_copy(update={"revoked_at": utcnow()}), session=tx.session)
        return await _new_key(runtime, key.store_id, key.scopes, key.key_id, tx.session)

    return await runtime.uow.run(rotate, name="rotate API key")


@router.delete(
    "/api-keys/{key_id}",
    tags=["api keys"],
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Revoke a store's API key",
)
async def revoke_api_key(key_id: PathId, runtime: RuntimeDep, actor: EdgeActor) -> Response:
    key = await _own_key(runtime, actor, key_id)
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        await ApiKeys(runtime.db).save(key)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# -------------------------------------------------------- development only --

dev_router = APIRouter(prefix="/v1/dev", include_in_schema=False)


@dev_router.get("/sms")
async def sms_log(
    runtime: RuntimeDep, phone: Annotated[str, Query(pattern=r"^\+[1-9][0-9]{6,14}$")]
) -> list[dict[str, str]]:
    """What the development SMS sender 'sent' to a phone, newest first."""
    if not runtime.settings.dev_sms_log:
        raise NotFound("not found")
    cursor = runtime.db[SMS_LOG].find({"phone": phone}, {"_id": 0}).sort("at", -1).limit(20)
    return [{"text": d["text"], "at": d["at"].isoformat()} async for d in cursor]
