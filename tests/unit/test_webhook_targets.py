"""A store's webhook URL may not point into the platform's own network: the gateway would post
there for the store and show it what came back. Development and tests allow it."""

from __future__ import annotations

import pytest

from services.gateway.webhooks import refused_target, target_refusal


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",  # this machine
        "10.0.3.7",
        "172.16.0.9",
        "192.168.1.20",  # private networks
        "169.254.169.254",  # the cloud's metadata service
        "::1",
        "fd00::5",  # unique local IPv6
        "fe80::1%eth0",  # link-local, with its zone
        "0.0.0.0",
        "224.0.0.1",  # multicast
    ],
)
def test_an_address_of_the_platforms_own_network_is_refused(address: str) -> None:
    refusal = refused_target("https", [address], private_allowed=False)
    assert refusal is not None
    assert "not a public address" in refusal


def test_a_public_address_over_https_is_accepted_and_plain_http_is_not() -> None:
    assert refused_target("https", ["93.184.215.14", "2606:2800:21f:cb07::1"], False) is None
    assert refused_target("http", ["93.184.215.14"], False) == "webhook URLs must use https"


def test_one_private_address_among_public_ones_is_enough_to_refuse() -> None:
    assert refused_target("https", ["93.184.215.14", "10.1.1.1"], False) is not None


def test_a_host_that_does_not_resolve_is_refused() -> None:
    assert refused_target("https", [], False) == "the webhook's host does not resolve"


def test_development_allows_this_machine_and_plain_http() -> None:
    assert refused_target("http", ["127.0.0.1"], private_allowed=True) is None


async def test_a_url_naming_this_machine_is_refused_after_resolving_it() -> None:
    for url in ("https://localhost/hook", "https://127.0.0.1:8443/x", "https://[::1]/x"):
        refusal = await target_refusal(url, private_allowed=False)
        assert refusal is not None, url
        assert "not a public address" in refusal, url
    assert await target_refusal("http://127.0.0.1:9/hook", private_allowed=True) is None
