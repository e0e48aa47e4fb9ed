"""Doorstep's common package: the event backbone every service is built on.

One place for the event envelope and schemas, the Kafka plumbing, the
transactional outbox and its relay, the inbox-guarded consumer loop, MongoDB
helpers, settings, logging and metrics. Services never re-implement these.
"""
