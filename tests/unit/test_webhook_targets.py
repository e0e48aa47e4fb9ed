"""A store's webhook URL may not point into the platform's own network: the gateway would post
there for the store and show it what came back. Development and tests allow it."""

from __future__ import annotations

import asyncio
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.gateway.webhooks import (
    Target,
    checked_target,
    pinned,
    post,
    refused_target,
    target_refusal,
)


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


async def test_a_host_with_a_label_too_long_to_encode_is_refused_not_a_crash() -> None:
    # getaddrinfo raises UnicodeError (not OSError) for a label over 63 characters.
    url = f"https://{'a' * 64}.example.com/hook"
    assert await target_refusal(url, private_allowed=False) == "the webhook's host does not resolve"


def test_development_allows_this_machine_and_plain_http() -> None:
    assert refused_target("http", ["127.0.0.1"], private_allowed=True) is None


async def test_a_url_naming_this_machine_is_refused_after_resolving_it() -> None:
    for url in ("https://localhost/hook", "https://127.0.0.1:8443/x", "https://[::1]/x"):
        refusal = await target_refusal(url, private_allowed=False)
        assert refusal is not None, url
        assert "not a public address" in refusal, url
    assert await target_refusal("http://127.0.0.1:9/hook", private_allowed=True) is None


class Rebinding:
    """A name that resolves to a public address when checked, and to this machine after."""

    def __init__(self, first: str) -> None:
        self.answers = [[first], ["127.0.0.1"]]

    async def __call__(self, host: str, port: int) -> list[str]:
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


@pytest.mark.parametrize(
    ("address", "sent_to"),
    [("93.184.215.14", "93.184.215.14"), ("2606:2800:21f:cb07::1", "[2606:2800:21f:cb07::1]")],
)
async def test_a_delivery_connects_to_the_address_checked_not_to_a_name_rebound_since(
    address: str, sent_to: str
) -> None:
    resolver = Rebinding(address)
    target = await checked_target("https://hooks.example.com:8443/in?x=1", False, resolver)
    assert target == Target("https://hooks.example.com:8443/in?x=1", addresses=(address,))
    assert await resolver("hooks.example.com", 8443) == ["127.0.0.1"]  # rebound now
    seen: list[httpx.Request] = []

    def receiver(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    answer = await post(
        target, "{}", {"X-Doorstep-Event-Id": "ev_1"}, httpx.MockTransport(receiver)
    )
    assert answer.status_code == 204
    (request,) = seen
    assert str(request.url) == f"https://{sent_to}:8443/in?x=1"
    assert request.headers["host"] == "hooks.example.com:8443"
    assert request.headers["x-doorstep-event-id"] == "ev_1"
    assert request.extensions["sni_hostname"] == "hooks.example.com"


async def test_where_private_targets_are_allowed_a_delivery_goes_by_name() -> None:
    target = await checked_target("http://localhost:9/hook", True)
    assert target == Target("http://localhost:9/hook")
    url, headers, extensions = pinned(target.url, None, {"a": "b"})
    assert (str(url), headers, extensions) == ("http://localhost:9/hook", {"a": "b"}, {})


def test_an_internationalised_name_goes_to_tls_and_host_in_its_ascii_form() -> None:
    # httpx would decode it (xn--fa-hia is "faß"), and ssl encode it again as "fass".
    url, headers, extensions = pinned("https://xn--fa-hia.de/in", "93.184.215.14", {})
    assert str(url) == "https://93.184.215.14/in"
    assert (headers["Host"], extensions["sni_hostname"]) == ("xn--fa-hia.de", "xn--fa-hia.de")
    # A name pydantic takes but IDNA 2008 refuses is still sent as it was given.
    _, headers, extensions = pinned("https://xn--ls8h.la/", "93.184.215.14", {})
    assert extensions["sni_hostname"] == "xn--ls8h.la"


async def test_a_delivery_tries_the_next_checked_address_when_one_takes_no_connection() -> None:
    target = Target("https://hooks.example.com/in", addresses=("2606:2800::1", "93.184.215.14"))
    tried: list[str] = []

    def network(request: httpx.Request) -> httpx.Response:
        tried.append(request.url.host)
        if request.url.host == "2606:2800::1":  # no route for IPv6 here
            raise httpx.ConnectError("network unreachable", request=request)
        return httpx.Response(200)

    answer = await post(target, "{}", {}, httpx.MockTransport(network))
    assert (answer.status_code, tried) == (200, ["2606:2800::1", "93.184.215.14"])
    with pytest.raises(httpx.ConnectError):  # none takes it: the last one's error
        await post(
            Target(target.url, addresses=("2606:2800::1",)), "{}", {}, httpx.MockTransport(network)
        )


def _certificate(name: str, directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for `name` and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@pytest.mark.parametrize("certified", ["hooks.example.test", "elsewhere.example.test"])
async def test_over_tls_a_pinned_delivery_names_the_host_and_checks_its_certificate(
    certified: str, tmp_path: Path
) -> None:
    """A real TLS server on 127.0.0.1 (the pinned address) with a certificate for a name: the
    delivery sends the name (SNI and Host) and accepts only a certificate for that name."""
    cert_file, key_file = _certificate(certified, tmp_path)
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert_file, key_file)
    heard: dict[str, str] = {}

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        heard["host"] = next(
            line.split(":", 1)[1].strip()
            for line in head.split("\r\n")
            if line.lower().startswith("host:")
        )
        writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    def sni(sock: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        heard["sni_seen"] = name or ""

    server_side.sni_callback = sni
    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_side)
    port = server.sockets[0].getsockname()[1]
    trusting = ssl.create_default_context(cafile=str(cert_file))
    target = Target(f"https://hooks.example.test:{port}/in", addresses=("127.0.0.1",))
    try:
        async with server:
            if certified == "hooks.example.test":
                sent = await post(target, "{}", {}, httpx.AsyncHTTPTransport(verify=trusting))
                assert sent.status_code == 204
                assert heard["host"] == f"hooks.example.test:{port}"
                assert heard["sni_seen"] == "hooks.example.test"
            else:
                with pytest.raises(httpx.ConnectError, match=r"certificate|hostname"):
                    await post(target, "{}", {}, httpx.AsyncHTTPTransport(verify=trusting))
    finally:
        server.close()
