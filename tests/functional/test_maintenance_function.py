"""MaintenanceFunction and MappingFailuresFunction as the template declares them, run as
`make invoke` runs functions, against a real Valkey, with the maintenance user's ACL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from cachesync.config import Settings
from cachesync.connection import get_client
from cachesync.ingest import build_ingestor
from devkit import acl
from devkit.generator import EventGenerator

ROOT = Path(__file__).resolve().parents[2]
# MappingFailuresFunction exists where the mappings may skip a batch: provisioned, bounded retries
SKIPPING = ("PollerMode=PROVISIONED", "KafkaMaximumRetryAttempts=3")


def invoke(function: str, event: dict[str, Any], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devkit.invoke", function, "-", "--parameter-overrides", *SKIPPING],
        cwd=ROOT,
        env={**os.environ, **env},
        input=json.dumps(event),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_status_skip_markers_clear_and_finish_as_the_maintenance_user(valkey: Any) -> None:
    settings = Settings.from_env({"REDIS_URL": valkey.url})
    build_ingestor(settings).process(EventGenerator(seed=4, partitions=2).batch(200))
    admin = redis.Redis.from_url(valkey.url)
    admin.execute_command(*acl.maintenance_rule(settings).setuser_args("maint", "maint-password"))
    host, port = valkey.url.removeprefix("redis://").split("/")[0].split(":")
    # the function connects as the maintenance user, whose rights are the ACL rule's only
    env = {"REDIS_URL": f"redis://maint:maint-password@{host}:{port}/0", "REDIS_CLUSTER": "false"}

    status = invoke("MaintenanceFunction", {"action": "status"}, env)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert set(report["topics"]) == {"orders", "inventory", "products"}
    assert report["diverged"] == {} and report["deadLetters"] == 0

    record = {
        "requestContext": {"condition": "RetryAttemptsExhausted", "approximateInvokeCount": 3},
        "KafkaBatchInfo": {"recordsInfo": {"orders-1": {"firstRecordOffset": "40", "lastRecordOffset": "57"}}},
    }
    sqs = {"Records": [{"messageId": "m1", "eventSource": "aws:sqs", "body": json.dumps(record)}]}
    skipped = invoke("MappingFailuresFunction", sqs, env)
    assert skipped.returncode == 0, skipped.stderr
    marker = json.loads(invoke("MaintenanceFunction", {"action": "status"}, env).stdout)["diverged"]["orders/1"]
    assert (marker["state"], marker["since"], marker["last"]) == ("skipped", 40, 57)

    cleared = invoke("MaintenanceFunction", {"action": "clear", "topic": "orders"}, env)
    assert cleared.returncode == 0, cleared.stderr
    assert json.loads(cleared.stdout)["keys"] > 0
    assert not list(admin.scan_iter(match="orders:*")) and list(admin.scan_iter(match="products:*"))
    report = json.loads(invoke("MaintenanceFunction", {"action": "status"}, env).stdout)
    assert "orders" not in report["topics"] or not report["topics"]["orders"]["partitions"]
    assert report["diverged"]["orders"]["state"] == "rebuilding"
    assert invoke("MaintenanceFunction", {"action": "finish", "topic": "orders"}, env).returncode == 0
    assert json.loads(invoke("MaintenanceFunction", {"action": "status"}, env).stdout)["diverged"] == {}


@pytest.mark.parametrize("event", [{}, {"action": "clear"}, {"action": "clear", "topic": "nope"}, {"action": "drop"}])
def test_a_request_it_does_not_know_is_a_clear_error(valkey: Any, event: dict[str, Any]) -> None:
    result = invoke("MaintenanceFunction", event, {"REDIS_URL": valkey.url, "REDIS_CLUSTER": "false"})
    assert result.returncode != 0
    assert 'expected {"action": "status"}' in result.stderr
    assert get_client(Settings.from_env({"REDIS_URL": valkey.url})).dbsize() == 0  # nothing touched
