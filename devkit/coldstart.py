"""Cold start: a fresh interpreter importing each handler and serving its first invocation.

    python -m devkit.coldstart [--runs 5] [--cluster]

Each run is a new `python` process with the function's code and the layer on
sys.path (as Lambda lays them out) and the function's template environment. It
reports the handler module's import time, its first invocation (connecting to
Redis included) and the whole process from exec to exit. IngestFunction gets
events/kafka-orders.json on an emptied server; ApiFunction then gets
events/api-get-order.json (order 18, a route every page load hits), and in other
runs events/api-get-inventory-item.json (a route used less often). Both go
through the Powertools resolver, built at import. Medians of `--runs`.

Twice: with the venv's packages, whose bytecode pip compiled at install, and with
the layer's packages as `sam build` ships them, without bytecode (what a Lambda
cold start imports: see layer_without_bytecode).

Also the size of each built artifact (`sam build` output in .aws-sam/build):
files, bytes unpacked, and bytes as the zip that gets uploaded.
"""

from __future__ import annotations

import argparse
import io
import json
import os
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

# runs in the fresh interpreter; writes its figures to argv[4] (stdout belongs to the handler's logs)
_CHILD = """
import time
started = time.perf_counter()
import importlib, json, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
module = importlib.import_module("app")
imported = time.perf_counter()

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
    json.dump({"import_ms": (imported - started) * 1000, "first_ms": (done - before) * 1000, "status": status}, out)
"""


def cold_runs(
    function_name: str, event_name: str, redis_url: str, cluster: bool, runs: int, layer_copy: Path | None = None
) -> dict[str, Any]:
    """`layer_copy`: run on that copy of the layer (see layer_without_bytecode) instead of the venv's."""
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
            subprocess.run(
                [sys.executable, "-c", _CHILD, layer, str(function.code_dir), str(event), str(report)],
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
        "bytecode": layer_copy is None,
        "runs": runs,
        "import_ms": statistics.median(r["import_ms"] for r in results),
        "import_max_ms": max(r["import_ms"] for r in results),
        "first_ms": statistics.median(r["first_ms"] for r in results),
        "process_ms": statistics.median(r["process_ms"] for r in results),
        "statuses": statuses,
    }


def _flush(redis_url: str, cluster: bool) -> None:
    if cluster:
        redis.RedisCluster.from_url(redis_url).flushall(target_nodes="primaries")
    else:
        redis.Redis.from_url(redis_url).flushall()


def layer_without_bytecode(directory: Path, build: Path = BUILD) -> Path | None:
    """The layer's packages as `sam build` ships them: no compiled bytecode.

    The layer's Makefile installs with --no-compile and Lambda cannot write to /opt,
    so each cold start compiles every module it imports. The packages are copied from
    this venv (the built ones are arm64 wheels), named as in .aws-sam/build/SharedLayer.
    """
    built = build / "SharedLayer" / "python"
    if not built.is_dir():
        return None
    site = Path(redis.__file__).resolve().parent.parent
    target = directory / "python"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for entry in built.iterdir():
        if entry.name.endswith(".dist-info") or entry.name == "cachesync":
            continue
        source = site / entry.name
        if source.is_dir():
            shutil.copytree(source, target / entry.name, ignore=skip)
        elif source.is_file():
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / entry.name)
    shutil.copytree(ROOT / "layers" / "shared" / "cachesync", target / "cachesync", ignore=skip)
    return target


def measure(runs: int = 5, cluster: bool = False, without_bytecode: bool = True) -> list[dict[str, Any]]:
    target = servers.start_cluster() if cluster else servers.start_server()
    try:
        results = [cold_runs(name, event, target.url, cluster, runs) for name, event in CASES]
        if without_bytecode:
            with tempfile.TemporaryDirectory() as directory:
                copy = layer_without_bytecode(Path(directory))
                if copy is not None:
                    results += [cold_runs(name, event, target.url, cluster, runs, copy) for name, event in CASES]
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
