"""Asking Kafka again while it answers that it cannot yet: a group's committed offsets right after a
broker starts (make status, make rebuild), a new topic's leaders."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from devkit.esm import kafka


def test_a_coordinator_still_loading_is_asked_again_and_other_errors_are_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka.time, "sleep", lambda _: None)
    answers: list[object] = [
        KafkaException(KafkaError(KafkaError.NOT_COORDINATOR)),
        KafkaException(KafkaError(KafkaError.COORDINATOR_LOAD_IN_PROGRESS)),
        "committed",
    ]

    def committed() -> object:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert kafka.retrying(committed, kafka.coordinator_settling()) == "committed"
    assert answers == []

    def refused() -> object:
        raise KafkaException(KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED))

    with pytest.raises(KafkaException):
        kafka.retrying(refused, kafka.coordinator_settling())
