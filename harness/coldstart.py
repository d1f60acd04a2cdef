"""Cold start: a fresh interpreter importing each handler and serving its first invocation.

    python -m harness.coldstart [--runs 5] [--cluster]

Each run is a new `python` process with the function's code and the layer on
sys.path (as Lambda lays them out) and the function's template environment. It
reports the handler module's import time, its first invocation (connecting to
Redis included) and the whole process from exec to exit. IngestFunction gets
events/kafka-orders.json on an emptied server; ApiFunction then gets
events/api-get-order.json (order 18, a route every page load hits), and in other
runs events/api-get-inventory-item.json (a route used less often). Both go
through the Powertools resolver, built at import. Medians of `--runs`.

With this venv's packages and interpreter (bytecode compiled by pip at install), and
with the layer as `sam build` ships it, run by a CPython 3.13 as on Lambda: the
layer's own Makefile builds it again for this machine's CPU (the wheels of the
lock for this platform instead of arm64, bytecode compiled the same way), once as
it comes out and once with its bytecode removed (what a build without a 3.13 ships;
Lambda cannot write bytecode under /opt, so every cold start compiles what it
imports). The built-layer runs need a CPython 3.13 on this machine; the Makefile
looks for one and says when there is none.

ApiFunction also as deployed with SnapStart: the import and the before-snapshot hooks run
first (Lambda runs them once, when it publishes a version), then the after-restore hooks
(`restore_ms`: reconnecting to the cache) and the first invocation, what a restored copy
runs before answering. Lambda's own restore of the snapshot is not measurable here.

Also the size of each built artifact (`sam build` output in .aws-sam/build):
files, bytes unpacked, and bytes as the zip that gets uploaded.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import redis

from devkit import servers
from devkit.sam import ROOT, describe

BUILD = ROOT / ".aws-sam" / "build"
# (function, first event): the API twice, first on a hot route (GET /orders/{id}), then on
# a cold one: a route's first request can cost more than its import (validation set-up)
CASES = (
    ("IngestFunction", "kafka-orders.json"),
    ("ApiFunction", "api-get-order.json"),
    ("ApiFunction", "api-get-inventory-item.json"),
)
# ApiFunction as deployed, with SnapStart: the import and the before-snapshot hooks (priming
# the routes, closing connections) happen once, when Lambda publishes a version; a cold start
# is a restore, then the after-restore hooks (reconnecting), then the first invocation
SNAPSTART_CASES = (("ApiFunction", "api-get-order.json"), ("ApiFunction", "api-get-inventory-item.json"))

# runs in the fresh interpreter; writes its figures to argv[4] (stdout belongs to the handler's logs);
# argv[5], when given, is where snapshot_restore_py is (Lambda's runtime ships it): run as SnapStart does
_CHILD = """
import time
started = time.perf_counter()
import importlib, json, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
snapstart = len(sys.argv) > 5
if snapstart:
    sys.path.append(sys.argv[5])
module = importlib.import_module("app")
imported = time.perf_counter()
restore_ms = None
if snapstart:
    import snapshot_restore_py
    for function, args, kwargs in reversed(snapshot_restore_py.get_before_snapshot()):
        function(*args, **kwargs)
    restored = time.perf_counter()  # the snapshot would be taken here, and resumed later
    for function, args, kwargs in snapshot_restore_py.get_after_restore():
        function(*args, **kwargs)
    restore_ms = (time.perf_counter() - restored) * 1000

class Context:
    function_name = "cold"
    function_version = "$LATEST"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:cold"
    aws_request_id = "00000000-0000-0000-0000-000000000000"
    log_group_name = "/aws/lambda/cold"
    log_stream_name = "cold"
    def get_remaining_time_in_millis(self):
        return 10000

with open(sys.argv[3]) as f:
    event = json.load(f)
before = time.perf_counter()
result = module.lambda_handler(event, Context())
done = time.perf_counter()
status = result.get("statusCode", 200) if isinstance(result, dict) else 200
with open(sys.argv[4], "w") as out:
    json.dump(
        {"import_ms": (imported - started) * 1000, "first_ms": (done - before) * 1000, "status": status,
         "restore_ms": restore_ms},
        out,
    )
"""


def cold_runs(
    function_name: str,
    event_name: str,
    redis_url: str,
    cluster: bool,
    runs: int,
    layer_copy: Path | None = None,
    python: str = sys.executable,
    layout: str = "venv packages with bytecode",
    snapstart: bool = False,
) -> dict[str, Any]:
    """`layer_copy`: run on that layer (see built_layer) with `python` instead of on the venv's.
    `snapstart`: import, run the before-snapshot hooks, then time the after-restore hooks and the
    first invocation, as a copy resumed from the snapshot runs them."""
    function = describe(function_name, {"RedisUrl": redis_url})
    env = {**os.environ, **function.environment, "REDIS_URL": redis_url, "REDIS_CLUSTER": str(cluster).lower()}
    env.pop("PYTHONPATH", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # every run as cold as the first
    layer = str(function.layer_dirs[0]) if function.layer_dirs else ""
    if layer_copy is not None:
        layer = str(layer_copy)
    event = ROOT / "events" / event_name
    results = []
    with tempfile.TemporaryDirectory() as directory:
        report = Path(directory) / "report.json"
        for _ in range(runs):
            if function_name == "IngestFunction":
                _flush(redis_url, cluster)
            started = time.perf_counter()
            hooks = [_snapshot_restore_py_alone(Path(directory))] if snapstart else []
            subprocess.run(
                [python, "-c", _CHILD, layer, str(function.code_dir), str(event), str(report), *hooks],
                env=env,
                stdout=subprocess.DEVNULL,
                check=True,
                timeout=60,
            )
            wall = (time.perf_counter() - started) * 1000
            results.append({**json.loads(report.read_text()), "process_ms": wall})
    statuses = sorted({r["status"] for r in results})
    return {
        "function": function_name,
        "event": event_name,
        "layout": f"{layout}, SnapStart restore" if snapstart else layout,
        "snapstart": snapstart,
        "restore_ms": statistics.median(r["restore_ms"] for r in results) if snapstart else None,
        "python": _python_version(python),
        "runs": runs,
        "import_ms": statistics.median(r["import_ms"] for r in results),
        "import_max_ms": max(r["import_ms"] for r in results),
        "first_ms": statistics.median(r["first_ms"] for r in results),
        "process_ms": statistics.median(r["process_ms"] for r in results),
        "statuses": statuses,
    }


def _snapshot_restore_py_alone(directory: Path) -> str:
    """A directory holding only the SnapStart hooks library (Lambda's runtime has its own copy),
    so the child finds nothing else of this venv."""
    import snapshot_restore_py

    target = directory / "runtime"
    target.mkdir(exist_ok=True)
    shutil.copy(snapshot_restore_py.__file__, target)
    return str(target)


def _flush(redis_url: str, cluster: bool) -> None:
    if cluster:
        redis.RedisCluster.from_url(redis_url).flushall(target_nodes="primaries")
    else:
        redis.Redis.from_url(redis_url).flushall()


# pip's platform tags for this machine's CPU: the layer's Makefile builds for arm64 otherwise
_PLATFORM_TAGS = {
    "x86_64": "--platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_34_x86_64",
    "aarch64": "--platform manylinux2014_aarch64 --platform manylinux_2_28_aarch64 --platform manylinux_2_34_aarch64",
}
_COMPILED_WITH = re.compile(r"^layer bytecode: compiling for CPython 3\.13 with (\S+) ", re.MULTILINE)


def built_layer(directory: Path) -> tuple[Path, str] | None:
    """The layer as `sam build` makes it, for this machine's CPU, and the CPython 3.13 that compiled it.

    None (with the reason on stderr) when the Makefile finds no CPython 3.13 here: the
    layer's bytecode is for 3.13, so only a 3.13 can run it as Lambda does.
    """
    tags = _PLATFORM_TAGS.get(platform.machine())
    if tags is None:
        print(f"no built-layer cold start on {platform.machine()}", file=sys.stderr)
        return None
    flags = f"{tags} --python-version 3.13 --implementation cp --abi cp313 --only-binary=:all:"
    variables = [f"ARTIFACTS_DIR={directory}", f"PYTHON={sys.executable}", f"PIP_TARGET_FLAGS={flags}"]
    result = subprocess.run(
        ["make", "-C", str(ROOT / "layers" / "shared"), "build-SharedLayer", *variables],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    found = _COMPILED_WITH.search(result.stdout)
    if found is None:
        print(result.stdout.strip().splitlines()[-1], file=sys.stderr)  # the Makefile's warning
        return None
    return directory / "python", found.group(1)


def _without_bytecode(layer: Path, directory: Path) -> Path:
    copy = directory / "python"
    shutil.copytree(layer, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def _python_version(python: str) -> str:
    if python == sys.executable:
        return platform.python_version()
    command = [python, "-c", "import platform; print(platform.python_version())"]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()


def measure(runs: int = 5, cluster: bool = False, built: bool = True) -> list[dict[str, Any]]:
    """`built`: also the layer as `sam build` ships it, with and without its bytecode, on CPython 3.13."""
    target = servers.start_cluster() if cluster else servers.start_server()
    try:
        results = [cold_runs(name, event, target.url, cluster, runs) for name, event in CASES]
        results += [
            cold_runs(name, event, target.url, cluster, runs, snapstart=True) for name, event in SNAPSTART_CASES
        ]
        if built:
            with tempfile.TemporaryDirectory() as directory:
                found = built_layer(Path(directory) / "built")
                if found is not None:
                    layer, python = found
                    bare = _without_bytecode(layer, Path(directory) / "bare")
                    for copy, layout in ((layer, "layer as built, bytecode"), (bare, "layer as built, no bytecode")):
                        results += [
                            cold_runs(name, event, target.url, cluster, runs, copy, python, layout)
                            for name, event in CASES
                        ]
                    results += [
                        cold_runs(
                            name, event, target.url, cluster, runs, layer, python, "layer as built, bytecode", True
                        )
                        for name, event in SNAPSTART_CASES
                    ]
        return results
    finally:
        target.stop() if isinstance(target, servers.LocalCluster) else target.remove()


def artifact_sizes(build: Path = BUILD) -> list[dict[str, Any]]:
    """Files, unpacked bytes and zipped bytes of each artifact under .aws-sam/build."""
    sizes = []
    for directory in sorted(p for p in build.iterdir() if p.is_dir()) if build.is_dir() else []:
        files = [p for p in directory.rglob("*") if p.is_file()]
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in files:
                archive.write(path, path.relative_to(directory))
        sizes.append(
            {
                "artifact": directory.name,
                "files": len(files),
                "bytes": sum(p.stat().st_size for p in files),
                "zip_bytes": buffer.tell(),
            }
        )
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cluster", action="store_true", help="against a local 3-master cluster")
    args = parser.parse_args(argv)
    print(json.dumps({"cold": measure(args.runs, args.cluster), "artifacts": artifact_sizes()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
