"""The committed event catalogue and API reference match the code."""

from __future__ import annotations

from shared import apidocs, catalogue


def test_event_catalogue_is_current() -> None:
    assert catalogue.TARGET.read_text() == catalogue.render(), (
        "docs/events.md is stale: run `./dev docs`"
    )


def test_event_catalogue_lists_every_platform_event_with_producer_consumers_and_topic() -> None:
    text = catalogue.render()
    consumers = "dispatch, gateway, reviews"
    row = f"| [`booking.requested`](#bookingrequested-v1) | 1 | booking | {consumers} |"
    assert f"{row} `booking.events` |" in text
    assert "dispatch.service_completed" in text
    assert "| booking, gateway, payments, reviews |" in text  # service_completed
    # The board's handlers count too; the timeline is published by booking, on its own topic.
    timeline = "| [`booking.status_changed`](#bookingstatus_changed-v1) | 1 | booking | gateway |"
    assert f"{timeline} `booking.timeline.events` |" in text
    assert (
        "- **Producer:** `services/booking`\n- **Consumers:** `services/gateway`\n"
        + ("- **Topic:** `<prefix>booking.timeline.events`")
        in text
    )
    assert "probe.noted" not in text  # test-only events stay out


def test_api_reference_is_current() -> None:
    for name, text in apidocs.render().items():
        path = apidocs.TARGET / name
        assert path.exists(), f"{path} missing: run `./dev docs`"
        assert path.read_text() == text, f"{path} is stale: run `./dev docs`"
