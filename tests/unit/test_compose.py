"""docker-compose.yml is checked against the code (no Docker engine runs here)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices

from services.gateway.upstream import UpstreamSettings
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = sorted(p.parent.name for p in (ROOT / "services").glob("*/app.py"))
INFRA = {"kafka", "mongo", "mongo-init"}


def setting_names(*models: type[Any]) -> set[str]:
    names: set[str] = set()
    for model in models:
        for info in model.model_fields.values():
            alias = info.validation_alias
            if isinstance(alias, AliasChoices):
                names |= {c for c in alias.choices if isinstance(c, str)}
            elif isinstance(alias, str):
                names.add(alias)
    return names


def published_ports(service: dict[str, Any]) -> list[tuple[int, int]]:
    pairs = []
    for mapping in service.get("ports", []):
        host, container = str(mapping).split(":")[-2:]
        pairs.append((int(host), int(container)))
    return pairs


def test_services_found() -> None:
    assert SERVICES == ["booking", "dispatch", "gateway", "payments", "reviews"]


@pytest.mark.parametrize("name", SERVICES)
def test_every_service_runs_in_compose_with_its_settings(name: str) -> None:
    service = COMPOSE["services"][name]
    env = service["environment"]
    assert env["SERVICE_NAME"] == name
    assert env["KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert env["MONGODB_URI"].startswith("mongodb://mongo:27017/")
    assert "replicaSet=rs0" in env["MONGODB_URI"]  # transactions need the replica set
    assert service["command"] == ["python", "-m", f"services.{name}"]
    if name == "gateway":
        assert published_ports(service) == [(int(env["HTTP_PORT"]), int(env["HTTP_PORT"]))]
    else:
        # Only the gateway is reachable from outside; a service believes the caller named in
        # the X-Actor headers only with the gateway's signature.
        assert published_ports(service) == []
        # The signing key comes from the environment, never a value in the file.
        assert env["DOORSTEP_ACTOR_KEY"].startswith("${DOORSTEP_ACTOR_KEY:?")
        assert [str(p) for p in service["expose"]] == [str(env["HTTP_PORT"])]
    assert "readyz" in " ".join(service["healthcheck"]["test"])
    depends = service["depends_on"]
    assert depends["kafka"]["condition"] == "service_healthy"
    assert depends["mongo-init"]["condition"] == "service_completed_successfully"


@pytest.mark.parametrize("name", SERVICES)
def test_compose_sets_only_settings_the_code_reads(name: str) -> None:
    known = setting_names(Settings, UpstreamSettings)
    unknown = set(COMPOSE["services"][name]["environment"]) - known
    assert not unknown, f"{name} sets variables no code reads: {sorted(unknown)}"


def test_gateway_points_at_each_service_on_its_port() -> None:
    env = COMPOSE["services"]["gateway"]["environment"]
    for name in SERVICES:
        if name == "gateway":
            continue
        port = COMPOSE["services"][name]["environment"]["HTTP_PORT"]
        assert env[f"{name.upper()}_URL"] == f"http://{name}:{port}"


def test_images_are_pinned() -> None:
    for name, service in COMPOSE["services"].items():
        image = service.get("image")
        assert image, f"{name} has no image"
        repo, _, tag = image.rpartition(":")
        assert repo, f"{name}: image {image!r} has no tag"
        assert tag != "latest", f"{name}: image {image!r} is not pinned"
        assert re.fullmatch(r"\d+(\.\d+)+", tag), f"{name}: {image!r} is not an exact version"
    base = re.search(r"^FROM (\S+)", (ROOT / "deploy/docker/Dockerfile").read_text(), re.M)
    assert base is not None
    assert re.search(r":\d+\.\d+\.\d+", base.group(1)), base.group(1)


def test_no_two_services_publish_one_host_port() -> None:
    hosts = [h for s in COMPOSE["services"].values() for h, _ in published_ports(s)]
    assert len(hosts) == len(set(hosts))
    assert set(COMPOSE["services"]) == set(SERVICES) | INFRA


def test_kafka_runs_kraft_and_mongo_a_replica_set() -> None:
    kafka = COMPOSE["services"]["kafka"]["environment"]
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "--replSet" in COMPOSE["services"]["mongo"]["command"]
    assert "rs.initiate" in " ".join(COMPOSE["services"]["mongo-init"]["entrypoint"])
