"""make status and make rebuild read a group's committed offsets right after a broker starts."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from devkit import ops


def test_a_coordinator_still_loading_is_asked_again_and_other_errors_are_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ops.time, "sleep", lambda _: None)
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

    assert ops._retrying(committed) == "committed"
    assert answers == []

    def refused() -> object:
        raise KafkaException(KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED))

    with pytest.raises(KafkaException):
        ops._retrying(refused)
