"""Connecting to Kafka the way the mapping's SourceAccessConfigurations say, with clear errors.

Credentials come from the environment (`KAFKA_USERNAME`, `KAFKA_PASSWORD`) or
from a Secrets Manager secret in Lambda's format, `{"username", "password"}`
(`KAFKA_SECRET_ARN`, or the mapping's own secret with `--use-secret`). With
credentials the connection is SASL_SSL, as Lambda requires; a local broker
without them is plaintext. `KAFKA_SECURITY_PROTOCOL` and `KAFKA_SASL_MECHANISM`
override both.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from devkit.esm.mapping import MappingConfig

AUTH_ERROR_CODES = ("_AUTHENTICATION", "SASL_AUTHENTICATION_FAILED", "TOPIC_AUTHORIZATION_FAILED")
RETRY_SECONDS = 30.0
T = TypeVar("T")


class MappingError(RuntimeError):
    """The mapping cannot run: the broker is unreachable, a topic is missing, the credentials are refused."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)  # never printed


def credentials(
    config: MappingConfig, env: Mapping[str, str] | None = None, use_secret: bool = False
) -> Credentials | None:
    env = os.environ if env is None else env
    if env.get("KAFKA_USERNAME"):
        return Credentials(env["KAFKA_USERNAME"], env.get("KAFKA_PASSWORD", ""))
    arn = env.get("KAFKA_SECRET_ARN") or (config.secret_arn if use_secret else None)
    if not arn:
        return None
    import boto3

    try:
        region = arn.split(":")[3] if arn.count(":") >= 6 else None  # the secret's own region
        secret = boto3.client("secretsmanager", region_name=region).get_secret_value(SecretId=arn)
        document = json.loads(secret["SecretString"])
        return Credentials(str(document["username"]), str(document["password"]))
    except (KeyError, TypeError, ValueError):
        raise MappingError(f"secret {arn} must be JSON with 'username' and 'password'") from None
    except Exception as error:
        raise MappingError(f"cannot read the Kafka secret {arn}: {type(error).__name__}") from None


def client_settings(
    config: MappingConfig, creds: Credentials | None, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """librdkafka settings shared by the mapping's consumer, its admin checks and its destination producer."""
    env = os.environ if env is None else env
    settings: dict[str, Any] = {"bootstrap.servers": ",".join(config.bootstrap_servers)}
    protocol = env.get("KAFKA_SECURITY_PROTOCOL")
    if creds is not None:
        settings |= {
            "security.protocol": protocol or "SASL_SSL",
            "sasl.mechanism": env.get("KAFKA_SASL_MECHANISM") or config.sasl_mechanism or "PLAIN",
            "sasl.username": creds.username,
            "sasl.password": creds.password,
        }
    elif protocol:
        settings["security.protocol"] = protocol
    return settings


class ErrorLog:
    """librdkafka's error callback: keeps the last errors so a failure can say why."""

    def __init__(self) -> None:
        self.errors: list[Any] = []

    def __call__(self, error: Any) -> None:
        self.errors.append(error)
        del self.errors[:-20]

    def authentication(self) -> Any | None:
        return next((e for e in reversed(self.errors) if e.name() in AUTH_ERROR_CODES), None)


def check_topics(config: MappingConfig, settings: dict[str, Any], timeout: float = 5.0) -> None:
    """The broker answers within `timeout` and holds the mapping's topics; else a MappingError that says which."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    errors = ErrorLog()
    admin_settings: dict[str, Any] = {**settings, "error_cb": errors, "log_level": 0}
    admin = AdminClient(admin_settings)
    where = settings["bootstrap.servers"] or "(no bootstrap servers)"
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException:
        admin.poll(0.5)  # serves the error callbacks that say why
        refused = errors.authentication()
        if refused is not None:
            who = settings.get("sasl.username", "")
            raise MappingError(
                f"Kafka at {where} refused the credentials of {who!r} "
                f"({settings.get('sasl.mechanism')}): {refused.str()}"
            ) from None
        raise MappingError(
            f"cannot reach Kafka at {where} within {timeout:g} s ({config.logical_id}); is the broker running, "
            "and is KAFKA_BOOTSTRAP right?"
        ) from None
    for topic in config.topics:
        found = metadata.topics.get(topic)
        if found is None or found.error is not None:
            raise MappingError(f"topic {topic!r} of {config.logical_id} does not exist on Kafka at {where}")


def coordinator_settling() -> frozenset[int]:
    """A consumer group's coordinator still loading or elsewhere (a broker just started), which
    librdkafka's committed() does not call retriable."""
    from confluent_kafka import KafkaError

    return frozenset(
        {KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.COORDINATOR_NOT_AVAILABLE}
    )


def retrying(call: Callable[[], T], settling: Collection[int], deadline: float | None = None, pause: float = 0.2) -> T:
    """`call()`, again while Kafka answers that it cannot yet: an error it calls retriable, or one
    whose code is in `settling`, until `deadline` (time.monotonic(); default RETRY_SECONDS from now)."""
    from confluent_kafka import KafkaException

    deadline = time.monotonic() + RETRY_SECONDS if deadline is None else deadline
    while True:
        try:
            return call()
        except KafkaException as error:
            failure = error.args[0]
            if not (failure.retriable() or failure.code() in settling) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
