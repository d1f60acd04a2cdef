"""The local mappings' functions: an execution environment per concurrent invocation, as Lambda runs them."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from devkit.esm.runner import InProcessFunction
from devkit.sam import LocalFunction

HANDLER = """
from aws_lambda_powertools import Metrics

from shared import together  # imported once per process, like any library

metrics = Metrics(namespace="Test", service="test")
seen = []  # the events this copy of the module handled


def handler(event, context):
    seen.append(event["n"])
    metrics.add_metric("Seen", "Count", 1)
    if event["together"]:
        together.wait()  # both calls inside the handler at once, or a BrokenBarrierError
    return {"seen": list(seen), "store": id(metrics.metric_set), "values": len(metrics.metric_set["Seen"]["Value"])}
"""


@pytest.fixture
def function(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> InProcessFunction:
    name = f"shared_{tmp_path.name}".replace("-", "_")
    (tmp_path / f"{name}.py").write_text("import threading\n\ntogether = threading.Barrier(2, timeout=30)\n")
    (tmp_path / "app.py").write_text(HANDLER.replace("from shared import", f"from {name} import"))
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Test")
    return InProcessFunction(LocalFunction("Fn", "app.handler", tmp_path, (), {}, 128, 3))


def test_concurrent_invocations_get_environments_of_their_own(function: InProcessFunction) -> None:
    from aws_lambda_powertools.metrics.metrics import Metrics

    results: dict[int, Any] = {}

    def invoke(n: int) -> None:
        results[n] = function({"n": n, "together": True})

    threads = [threading.Thread(target=invoke, args=(n,)) for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(results) == [1, 2], "both calls must have been inside the handler at once"
    assert function.environments == 2
    assert results[1]["seen"] == [1] and results[2]["seen"] == [2]  # module globals of their own
    stores = {results[1]["store"], results[2]["store"]}
    assert len(stores) == 2 and id(Metrics._metrics) not in stores  # a Metrics store each, not the shared one

    # a warm environment is used again: the module remembers its earlier event, no third one is loaded
    later = function({"n": 3, "together": False})
    assert function.environments == 2
    assert later["seen"] in ([1, 3], [2, 3])


def test_disabled_metrics_do_not_pile_up_in_an_environment(
    function: InProcessFunction, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    answers = [function({"n": n, "together": False}) for n in range(3)]
    assert function.environments == 1
    assert [a["values"] for a in answers] == [1, 1, 1]  # cleared after each call


def test_a_handler_hook_wraps_every_call(function: InProcessFunction) -> None:
    seen: list[int] = []

    def around(call: Any, event: dict[str, Any]) -> Any:
        seen.append(event["n"])
        return {**call(), "wrapped": True}

    hooked = InProcessFunction(function.function, around_handler=around)
    assert hooked({"n": 7, "together": False})["wrapped"] is True
    assert seen == [7]
