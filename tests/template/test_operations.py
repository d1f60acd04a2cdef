"""Operations in template.yaml: the alarms on every cap, where they notify, and the dashboard.

The template goes through the SAM translator and `cfn.Resolved` as in test_template.py.
The metric-math alarms are evaluated on sample values, so a threshold that is computed
wrong fails here. The dashboard is rendered to the JSON CloudWatch would receive and
compared with the metrics the functions really emit: their EMF output, captured from
the handlers run as `make invoke` runs them, and the metric names found in their code.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from typing import Any

import pytest
import redis

from devkit import servers
from devkit.generator import EventGenerator
from tests.template.cfn import REQUIRED, ROOT, Resolved, load, ref
from tests.template.test_template import SCENARIOS, broken_rules, given
from tests.template.test_template import _region as _region  # autouse: the translator's region

TOPIC_ARN = "arn:aws:sns:us-east-1:123456789012:oncall-pager"

# the ways to be notified, each on top of the given deployment
NOTIFY: dict[str, dict[str, str]] = {
    "silent": dict(REQUIRED),
    "email": {
        **REQUIRED,
        "AlarmEmail": "oncall@example.com",
        "CacheMaxDataStorageGb": "20",
        "CacheMaxEcpuPerSecond": "50000",
        "CacheAlarmFraction": "0.8",
        "FreshnessAlarmSeconds": "120",
    },
    # an existing cache and provisioned pollers, alarms to an existing topic
    "existing-topic": {
        **{k: v for k, v in SCENARIOS["existing-everything"].items() if k != "AlarmEmail"},
        "AlarmTopicArn": TOPIC_ARN,
    },
}

# stack-created cache only: the alarms on its caps
CACHE_ALARMS = {"CacheStorageAlarm", "CacheEcpuAlarm", "CacheThrottledAlarm"}


@pytest.fixture(params=sorted(NOTIFY), scope="module")
def deployment(request: pytest.FixtureRequest) -> tuple[str, dict[str, str], Resolved]:
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    return request.param, NOTIFY[request.param], Resolved(NOTIFY[request.param])


# ---------------------------------------------------------------------- notifications
def test_every_alarm_notifies_the_topic_only_when_there_is_one(
    deployment: tuple[str, dict[str, str], Resolved],
) -> None:
    name, _, stack = deployment
    alarms = stack.of_type("AWS::CloudWatch::Alarm")
    assert len(alarms) >= 10
    expected = {"silent": None, "email": [ref("AlarmTopic")], "existing-topic": [TOPIC_ARN]}[name]
    for alarm_name, alarm in alarms.items():
        properties = alarm["Properties"]
        assert properties.get("AlarmActions") == expected, alarm_name
        assert properties.get("OKActions") == expected, alarm_name
    assert ("AlarmTopic" in stack.resources) == (name == "email")
    assert not stack.of_type("AWS::SNS::Subscription")
    if name == "email":
        topic = stack.props("AlarmTopic")
        assert topic["Subscription"] == [{"Protocol": "email", "Endpoint": "oncall@example.com"}]


def test_an_email_and_an_existing_topic_together_are_refused() -> None:
    assert broken_rules(NOTIFY["existing-topic"]) == []
    assert broken_rules(NOTIFY["email"]) == []
    both = {**NOTIFY["email"], "AlarmTopicArn": TOPIC_ARN}
    assert any("AlarmEmail subscribes to a topic the stack creates" in f for f in broken_rules(both))


@pytest.mark.parametrize(
    ("arn", "accepted"),
    [
        (TOPIC_ARN, True),
        ("arn:aws-us-gov:sns:us-gov-west-1:123456789012:alarms_1", True),
        ("", True),
        ("arn:aws:sns:us-east-1:123456789012:alarms.fifo", False),  # alarms cannot notify FIFO topics
        ("arn:aws:sqs:us-east-1:123456789012:alarms", False),
        ("oncall@example.com", False),
    ],
)
def test_the_topic_parameter_takes_a_standard_topic_arn(arn: str, accepted: bool) -> None:
    pattern = load()["Parameters"]["AlarmTopicArn"]["AllowedPattern"]
    assert bool(re.fullmatch(pattern, arn)) == accepted


# ---------------------------------------------------------------------- alarms
def test_alarms_watch_functions_mapping_freshness_and_the_cache_caps(
    deployment: tuple[str, dict[str, str], Resolved],
) -> None:
    _, overrides, stack = deployment
    alarms = stack.of_type("AWS::CloudWatch::Alarm")
    creates_cache = given(overrides, "RedisUrl") == ""
    assert set(alarms) & CACHE_ALARMS == (CACHE_ALARMS if creates_cache else set())
    watched = {_watches(alarm) for alarm in alarms.values()}
    for function in ("IngestFunction", "ApiFunction"):
        for metric in ("Errors", "Throttles"):
            assert ("AWS/Lambda", metric, json.dumps(ref(function))) in watched, (function, metric)
    assert ("AWS/Lambda", "OffsetLag", json.dumps(ref("IngestFunction"))) in watched
    assert ("CacheSync", "FreshnessLagMs", "cachesync-ingest") in watched
    assert ("CacheSync", "RecordsApplied", "cachesync-ingest") in watched  # AllSkippedAlarm
    assert ("CacheSync", "CacheAuthFailed", "cachesync-api") in watched  # CacheAuthAlarm
    assert ("CacheSync", "CacheAuthFailed", "cachesync-ingest") in watched  # IngestCacheAuthAlarm
    if creates_cache:
        cache = json.dumps(ref("Cache"))
        assert {
            ("AWS/ElastiCache", "BytesUsedForCache", cache),
            ("AWS/ElastiCache", "ElastiCacheProcessingUnits", cache),
            ("AWS/ElastiCache", "ThrottledCmds", cache),
        } <= watched
        throttled = stack.props("CacheThrottledAlarm")
        assert throttled["Dimensions"] == [{"Name": "clusterId", "Value": ref("Cache")}]
        assert (throttled["Statistic"], throttled["Threshold"]) == ("Sum", 1)


def _metric_of(alarm: dict[str, Any]) -> dict[str, Any] | None:
    """The metric an alarm watches: its own, or the first one its metric math reads."""
    properties = alarm["Properties"]
    if "MetricName" in properties:
        return {k: properties[k] for k in ("Namespace", "MetricName", "Dimensions")}
    for query in properties.get("Metrics", []):
        if "MetricStat" in query:
            metric: dict[str, Any] = query["MetricStat"]["Metric"]
            return metric
    return None


def _watches(alarm: dict[str, Any]) -> tuple[str, str, str]:
    """(namespace, metric, value of its one dimension), a reference as its JSON."""
    metric = _metric_of(alarm)
    assert metric is not None
    (dimension,) = metric["Dimensions"]
    value = dimension["Value"]
    return metric["Namespace"], metric["MetricName"], value if isinstance(value, str) else json.dumps(value)


def evaluate(alarm: dict[str, Any], samples: dict[str, float]) -> bool:
    """Whether a metric-math alarm breaches, for one period with these values of its metrics.

    Evaluates the alarm's returned expression as CloudWatch would: arithmetic over the
    metric ids, PERIOD(id) being that metric's period in seconds.
    """
    queries = {q["Id"]: q for q in alarm["Metrics"]}
    (returned,) = [q for q in alarm["Metrics"] if q.get("ReturnData")]
    expression = returned["Expression"]
    assert isinstance(expression, str), f"not resolved to a number: {expression}"
    expression = re.sub(r"PERIOD\((\w+)\)", lambda m: str(queries[m.group(1)]["MetricStat"]["Period"]), expression)
    value = _arithmetic(ast.parse(expression, mode="eval").body, samples)
    threshold = float(alarm["Threshold"])
    operator = alarm["ComparisonOperator"]
    if operator == "GreaterThanOrEqualToThreshold":
        return value >= threshold
    if operator == "GreaterThanThreshold":
        return value > threshold
    raise AssertionError(f"operator {operator} not evaluated here")


def _arithmetic(node: ast.expr, samples: dict[str, float]) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return float(node.value)
    if isinstance(node, ast.Name):
        return samples[node.id]
    if isinstance(node, ast.BinOp):
        left, right = _arithmetic(node.left, samples), _arithmetic(node.right, samples)
        operations = {ast.Add: left + right, ast.Sub: left - right, ast.Mult: left * right}
        if isinstance(node.op, ast.Div):
            return left / right
        return operations[type(node.op)]
    raise AssertionError(f"not plain arithmetic: {ast.dump(node)}")


GB = 1_000_000_000


def test_storage_alarm_fires_at_the_fraction_of_the_storage_cap() -> None:
    for overrides in (NOTIFY["silent"], NOTIFY["email"]):
        stack = Resolved(overrides)
        alarm = stack.props("CacheStorageAlarm")
        cap_bytes = float(given(overrides, "CacheMaxDataStorageGb")) * GB
        fraction = float(given(overrides, "CacheAlarmFraction"))
        assert evaluate(alarm, {"used": cap_bytes * fraction})
        assert evaluate(alarm, {"used": cap_bytes})
        assert not evaluate(alarm, {"used": cap_bytes * fraction * 0.99})
        assert not evaluate(alarm, {"used": 0})
        (used,) = [q for q in alarm["Metrics"] if q["Id"] == "used"]
        assert used["MetricStat"]["Metric"]["MetricName"] == "BytesUsedForCache"
        assert used["MetricStat"]["Stat"] == "Maximum"


def test_ecpu_alarm_fires_at_the_fraction_of_the_ecpu_per_second_cap() -> None:
    for overrides in (NOTIFY["silent"], NOTIFY["email"]):
        stack = Resolved(overrides)
        alarm = stack.props("CacheEcpuAlarm")
        (ecpu,) = [q for q in alarm["Metrics"] if q["Id"] == "ecpu"]
        assert ecpu["MetricStat"]["Metric"]["MetricName"] == "ElastiCacheProcessingUnits"
        assert ecpu["MetricStat"]["Stat"] == "Sum"  # ECPUs consumed in the period
        seconds = ecpu["MetricStat"]["Period"]
        cap = float(given(overrides, "CacheMaxEcpuPerSecond"))
        fraction = float(given(overrides, "CacheAlarmFraction"))
        # a period's sum at the fraction of the per-second cap, every second of it
        assert evaluate(alarm, {"ecpu": cap * fraction * seconds})
        assert not evaluate(alarm, {"ecpu": cap * fraction * seconds * 0.99})
        # the per-second cap, not per period: one second's worth of the cap is far below it
        assert not evaluate(alarm, {"ecpu": cap})
        assert (alarm["EvaluationPeriods"], alarm["DatapointsToAlarm"]) == (5, 3)


def test_freshness_alarm_fires_past_the_seconds_given() -> None:
    for overrides in (NOTIFY["silent"], NOTIFY["email"]):
        alarm = Resolved(overrides).props("FreshnessAlarm")
        seconds = float(given(overrides, "FreshnessAlarmSeconds"))
        assert evaluate(alarm, {"lag": seconds * 1000 + 1})
        assert not evaluate(alarm, {"lag": seconds * 1000})
        (lag,) = [q for q in alarm["Metrics"] if q["Id"] == "lag"]
        assert lag["MetricStat"]["Metric"]["MetricName"] == "FreshnessLagMs"


def test_all_skipped_alarm_fires_only_when_records_arrive_and_none_apply() -> None:
    alarm = Resolved(NOTIFY["silent"]).props("AllSkippedAlarm")
    expression = next(q for q in alarm["Metrics"] if q.get("ReturnData"))["Expression"]

    def breaches(applied: float, skipped: float) -> bool:
        # CloudWatch's IF(condition, a, b) as Python's conditional expression
        python = re.sub(r"IF\((.+) AND (.+), 1, 0\)", r"(1 if (\1 and \2) else 0)", expression)
        return float(eval(python, {}, {"applied": applied, "skipped": skipped})) >= float(alarm["Threshold"])

    assert breaches(applied=0, skipped=500)
    assert not breaches(applied=1, skipped=500)  # some records still apply: a partial replay
    assert not breaches(applied=0, skipped=0)  # nothing arriving
    assert not breaches(applied=300, skipped=0)


# ---------------------------------------------------------------------- dashboard
def render(node: Any, stack: Resolved) -> Any:
    """The resolved template value as CloudFormation would hand it over, with made-up
    physical names for the resources (`<Name>`) and attributes (`<Name.Attribute>`)."""
    if isinstance(node, list):
        return [render(item, stack) for item in node]
    if not isinstance(node, dict):
        return node
    if set(node) == {"Ref"}:
        return f"<{node['Ref']}>"
    if set(node) == {"Fn::GetAtt"}:
        return "<{}.{}>".format(*node["Fn::GetAtt"])
    if set(node) == {"Fn::Sub"}:
        text = node["Fn::Sub"]
        assert isinstance(text, str)
        return re.sub(r"\$\{([^}!]+)\}", lambda m: f"<{m.group(1)}>", text)
    if set(node) == {"Fn::Join"}:
        separator, parts = node["Fn::Join"]
        return separator.join(render(part, stack) for part in parts)
    return {key: render(value, stack) for key, value in node.items()}


def dashboard(stack: Resolved) -> dict[str, Any]:
    body = render(stack.props("Dashboard")["DashboardBody"], stack)
    assert isinstance(body, str)
    document: dict[str, Any] = json.loads(body)
    return document


def dashboard_metrics(document: dict[str, Any]) -> set[tuple[str, str, tuple[tuple[str, str], ...]]]:
    """(namespace, metric, dimensions) of every metric the dashboard's graphs read."""
    found = set()
    for widget in document["widgets"]:
        for row in widget["properties"].get("metrics", []):
            names = [item for item in row if isinstance(item, str)]
            if not names:
                continue  # a metric math expression
            namespace, metric, *pairs = names
            assert len(pairs) % 2 == 0, row
            found.add((namespace, metric, tuple(sorted(zip(pairs[::2], pairs[1::2], strict=True)))))
    return found


def test_the_dashboard_is_valid_json_laid_out_on_the_grid(deployment: tuple[str, dict[str, str], Resolved]) -> None:
    _, overrides, stack = deployment
    document = dashboard(stack)
    widgets = document["widgets"]
    cells: set[tuple[int, int]] = set()
    for widget in widgets:
        assert widget["type"] in {"text", "alarm", "metric"}
        assert widget["x"] >= 0 and widget["x"] + widget["width"] <= 24, widget
        area = {
            (x, y)
            for x in range(widget["x"], widget["x"] + widget["width"])
            for y in range(widget["y"], widget["y"] + widget["height"])
        }
        assert not area & cells, f"widgets overlap: {widget['properties'].get('title')}"
        cells |= area
        if widget["type"] == "metric":
            assert widget["properties"]["region"] == "us-east-1"
    titles = [w["properties"].get("title", "") for w in widgets]
    assert len(titles) == len(set(titles))
    assert any(t.startswith("Cache:") for t in titles) == (given(overrides, "RedisUrl") == "")
    name = stack.props("Dashboard")["DashboardName"]
    assert name == "cachesync-us-east-1" and re.fullmatch(r"[A-Za-z0-9_-]{1,255}", name)
    assert stack.outputs["DashboardUrl"]["Value"] == {
        "Fn::Sub": "https://us-east-1.console.aws.amazon.com/cloudwatch/home?region=us-east-1#dashboards/dashboard/${Dashboard}"
    }


def test_the_dashboard_shows_the_state_of_every_alarm(deployment: tuple[str, dict[str, str], Resolved]) -> None:
    _, _, stack = deployment
    (widget,) = [w for w in dashboard(stack)["widgets"] if w["type"] == "alarm"]
    shown = widget["properties"]["alarms"]
    assert sorted(shown) == sorted(f"<{name}.Arn>" for name in stack.of_type("AWS::CloudWatch::Alarm"))


def test_the_dashboard_draws_the_caps_and_the_alarm_levels() -> None:
    overrides = NOTIFY["email"]
    stack = Resolved(overrides)
    widgets = {w["properties"].get("title"): w["properties"] for w in dashboard(stack)["widgets"]}
    storage = widgets["Cache: share of the storage cap"]
    (share,) = [row[0] for row in storage["metrics"] if isinstance(row[0], dict) and "expression" in row[0]]
    # the same ratio the alarm evaluates, against the same fraction
    assert share["expression"] == stack.props("CacheStorageAlarm")["Metrics"][1]["Expression"]
    assert [a["value"] for a in storage["annotations"]["horizontal"]] == [0.8, 1]
    ecpu = widgets["Cache: share of the ECPU/s cap"]
    (share,) = [row[0] for row in ecpu["metrics"] if isinstance(row[0], dict) and "expression" in row[0]]
    assert share["expression"] == stack.props("CacheEcpuAlarm")["Metrics"][1]["Expression"]
    assert "50000" in share["expression"]
    lag = widgets["Kafka mappings: offset lag (records)"]
    assert lag["annotations"]["horizontal"][0]["value"] == int(given(overrides, "OffsetLagAlarmThreshold"))
    freshness = widgets["Ingest: record age when applied (s)"]
    assert freshness["annotations"]["horizontal"][0]["value"] == 120


def test_the_dashboard_reads_the_mapping_cache_functions_and_api(
    deployment: tuple[str, dict[str, str], Resolved],
) -> None:
    _, overrides, stack = deployment
    metrics = dashboard_metrics(dashboard(stack))
    by_name = {(namespace, metric) for namespace, metric, _ in metrics}
    assert ("AWS/Lambda", "OffsetLag", (("FunctionName", "<IngestFunction>"),)) in metrics
    for function in ("IngestFunction", "ApiFunction"):
        for metric in ("Errors", "Throttles", "Duration"):
            assert ("AWS/Lambda", metric, (("FunctionName", f"<{function}>"),)) in metrics
    for metric in ("Count", "4xx", "5xx", "Latency"):
        assert ("AWS/ApiGateway", metric, (("ApiId", "<HttpApi>"),)) in metrics
    cache = {"BytesUsedForCache", "ElastiCacheProcessingUnits", "ThrottledCmds", "SuccessfulReadRequestLatency"}
    if given(overrides, "RedisUrl") == "":
        assert {("AWS/ElastiCache", m, (("clusterId", "<Cache>"),)) for m in cache} <= metrics
    else:
        assert not any(namespace == "AWS/ElastiCache" for namespace, _ in by_name)


# ---------------------------------------------------------------------- the metrics the code emits
def emitted_in_code() -> set[str]:
    """Metric names in the functions' and the layer's code: add_metric(...) and single_metric(name=...)."""
    names = set()
    for path in [*ROOT.glob("functions/*/*.py"), *ROOT.glob("layers/shared/cachesync/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if called not in {"add_metric", "single_metric"}:
                continue
            argument = next((k.value for k in node.keywords if k.arg == "name"), node.args[0] if node.args else None)
            assert isinstance(argument, ast.Constant) and isinstance(argument.value, str), (path, ast.dump(node))
            names.add(argument.value)
    return names


# MappingFailuresFunction exists where the mappings may skip a batch: provisioned, bounded retries
SKIPPING = ("PollerMode=PROVISIONED", "KafkaMaximumRetryAttempts=3")


def invoke(function: str, event: dict[str, Any], env: dict[str, str], fails: bool = False) -> list[dict[str, Any]]:
    """Runs a template function as `make invoke` does (`fails`: the invocation raises); its EMF documents."""
    result = subprocess.run(
        [sys.executable, "-m", "devkit.invoke", function, "-", "--parameter-overrides", *SKIPPING],
        cwd=ROOT,
        env={**os.environ, "REDIS_CLUSTER": "false", **env},
        input=json.dumps(event),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (result.returncode != 0) == fails, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    return [line for line in lines if "_aws" in line]


def metrics_of(documents: list[dict[str, Any]]) -> set[tuple[str, str, tuple[tuple[str, str], ...]]]:
    found = set()
    for document in documents:
        for directive in document["_aws"]["CloudWatchMetrics"]:
            for dimension_set in directive["Dimensions"]:
                dimensions = tuple(sorted((d, str(document[d])) for d in dimension_set))
                for metric in directive["Metrics"]:
                    found.add((directive["Namespace"], metric["Name"], dimensions))
    return found


@pytest.fixture(scope="module")
def emitted(valkey_server: servers.ServerProcess) -> set[tuple[str, str, tuple[tuple[str, str], ...]]]:
    """What the three functions that emit metrics send to CloudWatch, run on real events."""
    url = f"redis://127.0.0.1:{valkey_server.port}/15"
    redis.Redis.from_url(url).flushdb()
    ingest = invoke("IngestFunction", EventGenerator(seed=21, partitions=2).batch(40), {"REDIS_URL": url})
    skipped_batch = {
        "requestContext": {"condition": "RetryAttemptsExhausted", "approximateInvokeCount": 3},
        "KafkaBatchInfo": {"recordsInfo": {"orders-0": {"firstRecordOffset": "5", "lastRecordOffset": "9"}}},
    }
    sqs = {"Records": [{"messageId": "m1", "eventSource": "aws:sqs", "body": json.dumps(skipped_batch)}]}
    failures = invoke("MappingFailuresFunction", sqs, {"REDIS_URL": url})
    # the API with its cache unreachable: nothing listens on a free port
    request = json.loads((ROOT / "events/api-get-order.json").read_text())
    api = invoke("ApiFunction", request, {"REDIS_URL": f"redis://127.0.0.1:{servers.free_port()}/0"})
    # and with the cache refusing its credentials (WRONGPASS)
    refused = invoke("ApiFunction", request, {"REDIS_URL": f"redis://nobody:wrong@127.0.0.1:{valkey_server.port}/15"})
    # the ingest with its cache refusing a command it needs (the batch fails, to be retried)
    admin = redis.Redis.from_url(url)
    admin.execute_command("ACL", "SETUSER", "ingest-test", "on", ">pw", "~*", "+@all", "-zincrby")
    denied = invoke(
        "IngestFunction",
        EventGenerator(seed=22, partitions=2).batch(40),
        {"REDIS_URL": f"redis://ingest-test:pw@127.0.0.1:{valkey_server.port}/15"},
        fails=True,
    )
    admin.execute_command("ACL", "DELUSER", "ingest-test")
    return metrics_of(ingest + failures + api + refused + denied)


def test_the_functions_emit_every_metric_named_in_their_code(
    emitted: set[tuple[str, str, tuple[tuple[str, str], ...]]],
) -> None:
    in_code = emitted_in_code()
    assert {"RecordsApplied", "FreshnessLagMs", "CacheUnavailable", "CacheAuthFailed", "BatchesSkipped"} <= in_code
    assert {name for _, name, _ in emitted} == in_code


def test_the_dashboard_graphs_every_metric_the_functions_emit(
    emitted: set[tuple[str, str, tuple[tuple[str, str], ...]]],
) -> None:
    stack = Resolved(NOTIFY["silent"])
    drawn = dashboard_metrics(dashboard(stack))
    assert emitted - drawn == set()
    # and nothing in our namespace that no function emits (a renamed metric left behind)
    ours = {metric for metric in drawn if metric[0] == "CacheSync"}
    assert ours - emitted == set()


def test_alarms_on_our_metrics_read_what_the_functions_emit(
    emitted: set[tuple[str, str, tuple[tuple[str, str], ...]]],
) -> None:
    stack = Resolved(NOTIFY["silent"])
    for name, alarm in stack.of_type("AWS::CloudWatch::Alarm").items():
        properties = alarm["Properties"]
        queries = [q.get("MetricStat", {}).get("Metric") for q in properties.get("Metrics", [])]
        if "MetricName" in properties:  # an alarm on one metric
            queries.append({k: properties[k] for k in ("Namespace", "MetricName", "Dimensions")})
        for metric in queries:
            if metric is None or metric["Namespace"] != "CacheSync":
                continue
            dimensions = tuple(sorted((d["Name"], d["Value"]) for d in metric["Dimensions"]))
            assert (metric["Namespace"], metric["MetricName"], dimensions) in emitted, name


# ---------------------------------------------------------------------- docs
def test_the_operations_page_explains_every_alarm_and_links_the_runbook() -> None:
    page = (ROOT / "docs/operations.md").read_text()
    # every alarm: the skipped-batch one too, which needs bounded retries
    everything = Resolved(
        {**REQUIRED, "PollerMode": "PROVISIONED", "KafkaMaximumRetryAttempts": "3", "AlarmEmail": "a@example.com"}
    )
    assert "MappingFailureQueueAlarm" in everything.resources
    for name in everything.of_type("AWS::CloudWatch::Alarm"):
        assert re.search(rf"^#+ .*`{name}`", page, re.MULTILINE), f"docs/operations.md has no section on {name}"
    assert "deploy.md#status-and-rebuild" in page
    for widget in dashboard(everything)["widgets"]:
        if "title" in widget["properties"]:
            assert widget["properties"]["title"] in page, widget["properties"]["title"]
    assert "docs/operations.md" in (ROOT / "README.md").read_text()
