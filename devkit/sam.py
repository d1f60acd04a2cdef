"""Runs the template's functions in-process, the way `sam local invoke` would, without Docker.

The SAM CLI's own providers read `template.yaml` (Globals, parameters,
layers, environment), so the handler, code and layer paths and the
environment are exactly what `sam local invoke` would use.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import sys
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "template.yaml"

Handler = Callable[[dict[str, Any], Any], Any]


@dataclass(frozen=True)
class LocalFunction:
    logical_id: str
    handler: str
    code_dir: Path
    layer_dirs: tuple[Path, ...]
    environment: dict[str, str]
    memory_mb: int
    timeout_s: int


# What local runs give the template unless told otherwise: there is no ElastiCache here to sign
# IAM tokens for (the template's default, iam), so the functions connect as the URL says.
LOCAL_PARAMETERS = {"CacheAuthMode": "none"}


def describe(logical_id: str, parameters: Mapping[str, str] | None = None, template: Path = TEMPLATE) -> LocalFunction:
    from samcli.lib.providers.sam_function_provider import SamFunctionProvider

    stacks = local_stacks(template, parameters)
    function = SamFunctionProvider(stacks).get(logical_id)
    if function is None or not function.handler or not function.codeuri:
        names = [f.function_id for f in SamFunctionProvider(stacks).get_all()]
        raise SystemExit(f"no function {logical_id!r} in {template.name}; functions: {', '.join(sorted(names))}")
    base = template.parent
    variables = (function.environment or {}).get("Variables", {})
    resources = set(stacks[0].resources)
    return LocalFunction(
        logical_id=logical_id,
        handler=function.handler,
        code_dir=(base / function.codeuri).resolve(),
        layer_dirs=tuple(_layer_dir(base / layer.codeuri) for layer in function.layers if layer.codeuri),
        environment={k: str(v) for k, v in variables.items() if _resolved_locally(v, resources)},
        memory_mb=int(function.memory or 128),
        timeout_s=int(function.timeout or 3),
    )


def local_stacks(template: Path = TEMPLATE, parameters: Mapping[str, str] | None = None) -> list[Any]:
    """The template's stack as `sam local invoke --language-extensions` reads it: Fn::ForEach
    expanded (the per-topic mappings, the cache users), parameters resolved.

    The SAM CLI reads a template file once per process for each set of parameters (a few hundred
    ms each time): the functions, the mappings and the gateway of one run ask with the same
    parameters and share that reading. Each caller gets a copy of its own to change."""
    parameters = {**LOCAL_PARAMETERS, **(parameters or {})}
    path = Path(template).resolve()
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size, tuple(sorted((parameters or {}).items())))
    with _stacks_lock:
        stacks = _stacks_read.get(key)
        if stacks is None:
            stacks = _stacks_read[key] = read_stacks(path, parameters)
            while len(_stacks_read) > _STACKS_KEPT:
                del _stacks_read[next(iter(_stacks_read))]  # the oldest reading
        return copy.deepcopy(stacks)


def read_stacks(template: Path, parameters: Mapping[str, str] | None = None) -> list[Any]:
    """One reading of the template by the SAM CLI (local_stacks() keeps them)."""
    from samcli.lib.providers.sam_stack_provider import SamLocalStackProvider

    stacks, _ = SamLocalStackProvider.get_stacks(
        str(template), parameter_overrides=dict(parameters or {}), language_extensions_enabled=True
    )
    return list(stacks)


_STACKS_KEPT = 16
_stacks_read: dict[tuple[Any, ...], list[Any]] = {}
_stacks_lock = threading.Lock()


def _resolved_locally(value: Any, resources: set[str]) -> bool:
    """False for values that only exist in the cloud: SAM resolves `!Ref Queue` to the
    logical id "Queue", leaves `${Cache.Endpoint.Address}` in a Sub, and GetAtt as a dict."""
    if not isinstance(value, str | int | float | bool):
        return False
    text = str(value)
    return "${" not in text and text not in resources


def _layer_dir(path: Path) -> Path:
    # a layer's code may sit at its root or under python/, as Lambda lays it out
    return (path / "python").resolve() if (path / "python").is_dir() else path.resolve()


def load_handler(function: LocalFunction) -> Handler:
    """Import the handler module under a unique name, with its code and layers on sys.path."""
    for directory in (*function.layer_dirs, function.code_dir):
        if str(directory) not in sys.path:
            sys.path.insert(0, str(directory))
    module_name, _, attribute = function.handler.rpartition(".")
    path = function.code_dir / (module_name.replace(".", "/") + ".py")
    spec = importlib.util.spec_from_file_location(f"_local_{function.logical_id}_{module_name}", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    handler: Handler = getattr(module, attribute)
    return handler


def parameter_overrides(items: list[str]) -> dict[str, str]:
    """`KEY=VALUE` arguments (sam's --parameter-overrides) as a dict."""
    return dict(item.split("=", 1) for item in items if "=" in item)


def apply_environment(function: LocalFunction, overrides: Mapping[str, str]) -> None:
    """The function's template environment, then the overrides (like `sam local invoke --env-vars`)."""
    os.environ.update(function.environment)
    os.environ.update(overrides)


class LocalContext:
    """The parts of the Lambda context object that handlers and Powertools read."""

    def __init__(self, function: LocalFunction):
        self.function_name = function.logical_id
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = function.memory_mb
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{function.logical_id}"
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function.logical_id}"
        self.log_stream_name = "local"
        self._timeout_s = function.timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return self._timeout_s * 1000
