"""`make invoke FUNCTION=<LogicalId> EVENT=<file>`: the docker-free `sam local invoke`.

Reads the function from template.yaml (handler, code and layer paths,
environment), runs the handler in this process against `REDIS_URL` (or the
private Valkey, started when needed), prints logs to stderr and the response
as JSON to stdout.

    python -m devkit.invoke IngestFunction events/kafka-orders.json
    python -m devkit.invoke ApiFunction events/api-get-order.json --env-vars env.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from devkit import localredis
from devkit.sam import LocalContext, apply_environment, describe, load_handler, parameter_overrides


def invoke(
    logical_id: str, event: dict[str, Any], overrides: dict[str, str], parameters: dict[str, str] | None = None
) -> Any:
    template_parameters = dict(parameters or {})
    if "REDIS_URL" in overrides:
        template_parameters["RedisUrl"] = overrides["REDIS_URL"]
    function = describe(logical_id, template_parameters)
    apply_environment(function, overrides)
    # handler logs (Powertools writes to stdout) go to stderr, so stdout holds only the response
    with contextlib.redirect_stdout(sys.stderr):
        handler = load_handler(function)
        return handler(event, LocalContext(function))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Invoke a template function in-process (no Docker).")
    parser.add_argument("function", help="logical id, e.g. IngestFunction or ApiFunction")
    parser.add_argument("event", help="event JSON file, e.g. events/kafka-orders.json ('-' for stdin)")
    parser.add_argument("--env-vars", help="JSON file of environment overrides, as for `sam local invoke --env-vars`")
    parser.add_argument(
        "--parameter-overrides", nargs="*", default=[], metavar="KEY=VALUE", help="template parameters, as for sam"
    )
    args = parser.parse_args(argv)
    parameters = parameter_overrides(args.parameter_overrides)

    text = sys.stdin.read() if args.event == "-" else Path(args.event).read_text()
    try:
        event = json.loads(text)
    except json.JSONDecodeError as error:
        parser.error(f"{args.event} is not valid JSON: {error}")
    overrides = _env_overrides(args.env_vars, args.function)
    overrides["REDIS_URL"] = os.environ.get("REDIS_URL") or overrides.get("REDIS_URL") or localredis.ensure()
    # the local Redis decides the client, not the template's cloud cache
    overrides.setdefault("REDIS_CLUSTER", os.environ.get("REDIS_CLUSTER", "false"))
    print(f"invoking {args.function} with {args.event} against {overrides['REDIS_URL']}", file=sys.stderr)
    response = invoke(args.function, event, overrides, parameters)
    print(json.dumps(response, indent=2, default=str))
    return 0


def _env_overrides(path: str | None, function: str) -> dict[str, str]:
    if not path:
        return {}
    document = json.loads(Path(path).read_text())
    # same shape as SAM's: {"Parameters": {...}} for all functions, {"<LogicalId>": {...}} for one
    merged = {**document.get("Parameters", {}), **document.get(function, {})}
    return {k: str(v) for k, v in merged.items()}


if __name__ == "__main__":
    sys.exit(main())
