"""Settings read from the environment, one object per process."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob a service reads. Names are the environment variables."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    service_name: str = Field("doorstep", validation_alias="SERVICE_NAME")
    kafka_bootstrap: str = Field("127.0.0.1:9092", validation_alias="KAFKA_BOOTSTRAP")
    mongodb_uri: str = Field(
        "mongodb://127.0.0.1:27017/?replicaSet=rs0", validation_alias="MONGODB_URI"
    )
    # Prefixes isolate one platform (or one test session) from another on shared servers.
    topic_prefix: str = Field("doorstep.", validation_alias="DOORSTEP_TOPIC_PREFIX")
    db_prefix: str = Field("doorstep_", validation_alias="DOORSTEP_DB_PREFIX")
    http_host: str = Field("127.0.0.1", validation_alias=AliasChoices("HTTP_HOST", "HOST"))
    http_port: int = Field(8000, validation_alias=AliasChoices("HTTP_PORT", "PORT"))
    log_level: str = Field("INFO", validation_alias="LOG_LEVEL")
    log_json: bool = Field(True, validation_alias="LOG_JSON")
    # Signs the caller's identity from the gateway to the services (shared.auth). Required:
    # the same random value everywhere, from a secret store; ./dev keeps one in .run.
    actor_key: SecretStr | None = Field(None, validation_alias="DOORSTEP_ACTOR_KEY")

    topic_partitions: int = Field(3, validation_alias="DOORSTEP_TOPIC_PARTITIONS")
    outbox_poll_interval_s: float = Field(0.25, validation_alias="OUTBOX_POLL_INTERVAL_S")
    outbox_batch_size: int = Field(500, validation_alias="OUTBOX_BATCH_SIZE")
    # The relay sends what this process commits as it commits; it reads the outbox for rows
    # nobody handed over (a dead replica's, say) once they are this old, this often.
    outbox_sweep_after_s: float = Field(5.0, validation_alias="OUTBOX_SWEEP_AFTER_S")
    outbox_sweep_interval_s: float = Field(1.0, validation_alias="OUTBOX_SWEEP_INTERVAL_S")
    # Published rows are marked so at most this often (one update for all of them).
    outbox_mark_every_s: float = Field(0.25, validation_alias="OUTBOX_MARK_EVERY_S")
    # Rows handed over and waiting for Kafka beyond this are read back from MongoDB instead.
    outbox_queue_limit: int = Field(10_000, validation_alias="OUTBOX_QUEUE_LIMIT")
    consumer_max_attempts: int = Field(4, validation_alias="CONSUMER_MAX_ATTEMPTS")
    # Static group membership: a process restarted under the same id (after kill -9, say)
    # takes its partitions back at once, instead of the group waiting out the dead member's
    # session. It must be unique among the live processes of a service; the launchers use
    # the service's name and port. Unset: dynamic membership.
    consumer_instance_id: str | None = Field(None, validation_alias="KAFKA_GROUP_INSTANCE_ID")
    # A partition's waiting events are handled this many at a time in one transaction.
    consumer_batch_size: int = Field(50, validation_alias="CONSUMER_BATCH_SIZE")
    # Offsets are committed after the work, at most this often: a redelivery after a crash
    # or a rebalance is dropped by the inbox, and most polls hold only events this service
    # ignores, which would otherwise each cost a commit.
    consumer_commit_every_s: float = Field(0.5, validation_alias="CONSUMER_COMMIT_EVERY_S")
    consumer_backoff_s: float = Field(0.1, validation_alias="CONSUMER_BACKOFF_S")
    consumer_backoff_max_s: float = Field(5.0, validation_alias="CONSUMER_BACKOFF_MAX_S")
    # How long an event waits for one it depends on from another topic (errors.NotYet).
    consumer_wait_for_s: float = Field(300.0, validation_alias="CONSUMER_WAIT_FOR_S")
    timer_poll_interval_s: float = Field(1.0, validation_alias="TIMER_POLL_INTERVAL_S")
    timer_lease_s: float = Field(30.0, validation_alias="TIMER_LEASE_S")

    # Dispatch: how long a technician has to answer an offer, how long requests are
    # collected into one matching round, how long a booking may wait for anybody. No window
    # by default: a round starts when a request commits, and the requests that come in while
    # it runs make up the next one (a busy region batches itself; a quiet one does not wait).
    offer_timeout_s: float = Field(120.0, validation_alias="DISPATCH_OFFER_TIMEOUT_S")
    match_window_s: float = Field(0.0, validation_alias="DISPATCH_MATCH_WINDOW_S")
    search_timeout_s: float = Field(900.0, validation_alias="DISPATCH_SEARCH_TIMEOUT_S")
    # While everyone who could go is busy, a booking waits and is matched again this often.
    busy_retry_s: float = Field(3.0, validation_alias="DISPATCH_BUSY_RETRY_S")
    # How long past the latest arrival that still ends the visit within its window (and past
    # the earliest a technician assigned late could be there) before operations are told.
    late_grace_s: float = Field(600.0, validation_alias="DISPATCH_LATE_GRACE_S")
    check_in_max_distance_m: float = Field(300.0, validation_alias="DISPATCH_CHECK_IN_MAX_M")
    visit_code_attempts: int = Field(3, validation_alias="DISPATCH_VISIT_CODE_ATTEMPTS")
    # Derives the one-time visit codes; set it in production (never commit it). Unset, the
    # service keeps a random one in its own database so restarts and replicas agree.
    visit_code_secret: SecretStr | None = Field(None, validation_alias="DISPATCH_VISIT_CODE_SECRET")

    # Gateway sign-in. Access tokens are EdDSA JWTs from this key (32-byte seed, base64url;
    # unset, keys are made and kept in the gateway's database); refresh tokens last longer.
    gateway_token_seed: SecretStr | None = Field(None, validation_alias="GATEWAY_TOKEN_SEED")
    gateway_token_key_id: str = Field("env-1", validation_alias="GATEWAY_TOKEN_KEY_ID")
    access_token_ttl_s: int = Field(900, validation_alias="GATEWAY_ACCESS_TOKEN_TTL_S")
    refresh_token_ttl_s: int = Field(30 * 86400, validation_alias="GATEWAY_REFRESH_TOKEN_TTL_S")
    # However often it is refreshed, a sign-in ends this long after it began: a customer or
    # technician signs in again after 90 days, staff (who see personal data) after 12 hours.
    session_max_s: int = Field(90 * 86400, gt=0, validation_alias="GATEWAY_SESSION_MAX_S")
    staff_session_max_s: int = Field(
        12 * 3600, gt=0, validation_alias="GATEWAY_STAFF_SESSION_MAX_S"
    )
    otp_ttl_s: int = Field(300, validation_alias="GATEWAY_OTP_TTL_S")
    # Wrong guesses at a code: per address; and from every address but the one whose request
    # drew the code, all together (a stranger guessing never uses up the tries of whoever
    # asked for it, and asking again gives nobody tries of their own).
    otp_attempts: int = Field(5, validation_alias="GATEWAY_OTP_ATTEMPTS")
    otp_attempts_elsewhere: int = Field(5, validation_alias="GATEWAY_OTP_ATTEMPTS_ELSEWHERE")
    # Codes asked for one phone in an hour: from one address, and from all together.
    otp_requests_per_hour: int = Field(5, validation_alias="GATEWAY_OTP_REQUESTS_PER_HOUR")
    otp_requests_per_hour_all: int = Field(20, validation_alias="GATEWAY_OTP_REQUESTS_PER_HOUR_ALL")
    otp_secret: SecretStr | None = Field(None, validation_alias="GATEWAY_OTP_SECRET")
    # Requests per second (and burst) per signed-in caller, and per address for sign-in calls.
    gateway_rate_per_s: float = Field(20.0, validation_alias="GATEWAY_RATE_PER_S")
    gateway_burst: int = Field(40, validation_alias="GATEWAY_BURST")
    signin_rate_per_s: float = Field(5.0, validation_alias="GATEWAY_SIGNIN_RATE_PER_S")
    signin_burst: int = Field(50, validation_alias="GATEWAY_SIGNIN_BURST")
    # Codes texted per second over every phone, and the burst: what SMS can cost at worst.
    sms_per_s: float = Field(10.0, validation_alias="GATEWAY_SMS_PER_S")
    sms_burst: int = Field(100, validation_alias="GATEWAY_SMS_BURST")
    # Codes texted to the phones one client address asks for (at once, then one each 30 s):
    # a few addresses cannot use up the platform's whole allowance and stop every sign-in.
    sms_per_address: int = Field(20, ge=1, validation_alias="GATEWAY_SMS_PER_ADDRESS")
    sms_per_address_per_s: float = Field(
        1 / 30, gt=0, validation_alias="GATEWAY_SMS_PER_ADDRESS_PER_S"
    )
    # And per IPv6 site (/48), looser (many people may sign in from one office), so one
    # site cannot take a fresh /64 for every ask and use up the platform's allowance.
    sms_per_network: int = Field(100, ge=1, validation_alias="GATEWAY_SMS_PER_NETWORK")
    sms_per_network_per_s: float = Field(
        1 / 3, gt=0, validation_alias="GATEWAY_SMS_PER_NETWORK_PER_S"
    )
    # Wrong passwords a staff account may take at once, and one more each minute after: from
    # any one address, and from all the addresses it has not signed in from lately.
    staff_failures: int = Field(10, validation_alias="GATEWAY_STAFF_FAILURES")
    staff_failures_per_s: float = Field(1 / 60, validation_alias="GATEWAY_STAFF_FAILURES_PER_S")
    # How long a gateway trusts a technician's sign-ins it has read (another replica's taking
    # one back reaches it within this; its own, at once).
    technician_recheck_s: float = Field(30.0, ge=0, validation_alias="GATEWAY_TECHNICIAN_RECHECK_S")
    # Live streams (notifications, the board) one principal may hold open at once.
    streams_per_principal: int = Field(8, ge=1, validation_alias="GATEWAY_STREAMS_PER_PRINCIPAL")
    max_body_bytes: int = Field(
        64 * 1024, validation_alias=AliasChoices("MAX_BODY_BYTES", "GATEWAY_MAX_BODY_BYTES")
    )
    # Rows per list on the operations board (its page stays light); beyond them the board
    # says how many there are in all.
    board_rows: int = Field(1000, ge=1, validation_alias="GATEWAY_BOARD_ROWS")
    # Development and tests only: stores' webhooks may target this machine or a private
    # network, over plain http (in production: https to public addresses only, so a webhook
    # cannot be used to probe the platform's own network).
    webhook_private_targets: bool = Field(False, validation_alias="GATEWAY_WEBHOOK_PRIVATE_TARGETS")
    # Development only: codes "sent" by SMS are readable at GET /v1/dev/sms (never in production).
    dev_sms_log: bool = Field(False, validation_alias="DOORSTEP_DEV_SMS_LOG")

    # Tests only: mount POST /testing/clock to move the process's clock forward.
    test_clock: bool = Field(False, validation_alias="DOORSTEP_TEST_CLOCK")

    # Payments. The provider: "sandbox" ships; a real one plugs in behind the same interface.
    payments_provider: str = Field("sandbox", validation_alias="PAYMENTS_PROVIDER")
    # Where the provider posts its webhooks (default: this process) and the secret that signs
    # them; unset, a random one is kept in the service's database.
    payments_webhook_url: str | None = Field(None, validation_alias="PAYMENTS_WEBHOOK_URL")
    payments_webhook_secret: SecretStr | None = Field(
        None, validation_alias="PAYMENTS_WEBHOOK_SECRET"
    )
    sandbox_confirm_delay_s: float = Field(0.3, validation_alias="PAYMENTS_SANDBOX_CONFIRM_DELAY_S")
    # A charge or refund with no webhook after this long is looked up at the provider.
    provider_check_after_s: float = Field(30.0, validation_alias="PAYMENTS_PROVIDER_CHECK_AFTER_S")
    # A provider that does not answer is asked again (same key) after this long, then twice
    # as long each time up to the cap; operations are told after this many unanswered asks.
    provider_retry_s: float = Field(2.0, gt=0, validation_alias="PAYMENTS_PROVIDER_RETRY_S")
    provider_retry_max_s: float = Field(
        300.0, gt=0, validation_alias="PAYMENTS_PROVIDER_RETRY_MAX_S"
    )
    provider_alert_after: int = Field(5, ge=1, validation_alias="PAYMENTS_PROVIDER_ALERT_AFTER")
    # A signed receipt still unpaid (a declined card, cash nobody recorded) is reminded of
    # this long after, and again as long again, at most this many times.
    payment_reminder_after_s: float = Field(
        6 * 3600.0, gt=0, validation_alias="PAYMENTS_REMINDER_AFTER_S"
    )
    payment_reminders: int = Field(3, ge=0, validation_alias="PAYMENTS_REMINDERS")
    # Stores' weekly settlements: the platform's commission on a store's takings, in
    # hundredths of a percent; and how long after a week ends it may be closed: longer than
    # any unit of work that could still enter money in it lives (MongoDB aborts a transaction
    # after 60 s), and than the clocks of two replicas could disagree.
    store_commission_bps: int = Field(
        1500, ge=0, le=10_000, validation_alias="PAYMENTS_STORE_COMMISSION_BPS"
    )
    settlement_close_after_s: float = Field(
        3600.0, ge=120, validation_alias="PAYMENTS_SETTLEMENT_CLOSE_AFTER_S"
    )
    # The receipt-sealing key (32-byte Ed25519 seed, base64url) and its id. Unset, keys are
    # made and rotated in the service's database; set it from a secret store in production.
    receipt_sealing_seed: SecretStr | None = Field(None, validation_alias="RECEIPT_SEALING_SEED")
    receipt_sealing_key_id: str = Field("env-1", validation_alias="RECEIPT_SEALING_KEY_ID")

    @property
    def database_name(self) -> str:
        return f"{self.db_prefix}{self.service_name}"

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    @property
    def consumer_group(self) -> str:
        return f"{self.topic_prefix}{self.service_name}"

    @property
    def dead_letter_topic(self) -> str:
        return self.topic(f"dlq.{self.service_name}")
