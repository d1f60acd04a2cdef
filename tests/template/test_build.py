"""`sam build` on this machine: no Docker, artifacts for python3.13 / arm64.

Builds the whole template into a temporary directory, then checks what Lambda
would load: each function's handler imports under the built layout (function
code plus the layer's `python/` directory), every compiled module in the
layer is an AArch64 ELF built for CPython 3.13, and the layer carries CPython
3.13 bytecode when the build machine has a 3.13 (the build says so when not).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.template.cfn import ROOT, TEMPLATE
from tests.unavailable import unavailable

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
EM_AARCH64 = 183  # ELF e_machine of 64-bit ARM
CPYTHON_313_MAGIC = (3571).to_bytes(2, "little") + b"\r\n"  # importlib.util.MAGIC_NUMBER of 3.13
FUNCTIONS = ("IngestFunction", "ApiFunction")


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("sam") / "build"
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHON": sys.executable,  # the layer Makefile's pip (any Python: it targets cp313/aarch64)
        "SAM_CLI_TELEMETRY": "0",
    }
    result = subprocess.run(
        [str(BIN / "sam"), "build", "--template-file", str(TEMPLATE), "--build-dir", str(target)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "Build Succeeded" in result.stdout + result.stderr
    (target.parent / "build.log").write_text(result.stdout + result.stderr)
    return target


def layer_dir(build_dir: Path) -> Path:
    (layer,) = [p for p in build_dir.iterdir() if p.name.startswith("SharedLayer")]
    return layer / "python"


def test_function_artifacts_hold_only_their_code(build_dir: Path) -> None:
    for name in FUNCTIONS:
        artifact = build_dir / name
        assert (artifact / "app.py").is_file()
        leftovers = [p.name for p in artifact.rglob("*") if p.name in ("Makefile", "__pycache__", ".build")]
        assert not leftovers, f"{name}: {leftovers}"
        # dependencies live in the layer, not in each function
        assert not list(artifact.glob("*.dist-info")), name


def test_layer_has_the_package_its_data_files_and_pinned_dependencies(build_dir: Path) -> None:
    python = layer_dir(build_dir)
    source = ROOT / "layers/shared/cachesync"
    for data_file in ("fence.lua", "slot_tags.txt"):  # read at runtime
        assert (python / "cachesync" / data_file).read_text() == (source / data_file).read_text()
    assert {p.name for p in (python / "cachesync").glob("*.py")} == {p.name for p in source.glob("*.py")}
    # the bundled value schemas: Avro's JSON and Protobuf's descriptor sets (not the .proto sources)
    schemas = [p for p in (source / "value_schemas").iterdir() if p.suffix in (".avsc", ".binpb")]
    assert len(schemas) == 6
    for schema in schemas:
        assert (python / "cachesync/value_schemas" / schema.name).read_bytes() == schema.read_bytes()
    installed = {p.name.split("-")[0].lower().replace("_", "-"): p.name for p in python.glob("*.dist-info")}
    for line in (ROOT / "layers/shared/requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        name, _, version = line.partition("==")
        key = name.split("[")[0].lower().replace("_", "-")
        assert key in installed, f"{name} is not in the layer"
        assert installed[key].endswith(f"-{version}.dist-info"), installed[key]
    assert not (python / "bin").exists()


def test_compiled_modules_are_cp313_aarch64(build_dir: Path) -> None:
    python = layer_dir(build_dir)
    extensions = list(python.rglob("*.so"))
    assert extensions, "hiredis and orjson ship compiled modules"
    for path in extensions:
        assert path.name.endswith(".cpython-313-aarch64-linux-gnu.so") or ".abi3." in path.name, path
        header = path.read_bytes()[:20]
        assert header[:4] == b"\x7fELF" and header[4] == 2, f"{path.name}: not a 64-bit ELF"
        assert int.from_bytes(header[18:20], "little") == EM_AARCH64, f"{path.name}: not AArch64"
    for wheel in python.glob("*.dist-info/WHEEL"):
        tags = [line.split(":", 1)[1].strip() for line in wheel.read_text().splitlines() if line.startswith("Tag:")]
        assert tags, wheel
        for tag in tags:
            interpreter, abi, platform = tag.split("-")
            if platform == "any":
                continue
            assert interpreter == "cp313" or abi == "abi3", f"{wheel.parent.name}: {tag}"
            assert platform.endswith("_aarch64") and platform.startswith("manylinux"), f"{wheel.parent.name}: {tag}"


def test_layer_bytecode_is_cpython_313_and_never_checked_against_mtimes(build_dir: Path) -> None:
    log = (build_dir.parent / "build.log").read_text()
    if "WARNING: no CPython 3.13 found" in log:
        unavailable("no CPython 3.13 on this machine: the build said the layer ships without bytecode")
    assert "layer bytecode: compiling for CPython 3.13" in log, log[-3000:]
    python = layer_dir(build_dir)
    sources = [p for p in python.rglob("*.py") if "__pycache__" not in p.parts]
    assert len(sources) > 100
    for source in sources:
        compiled = source.parent / "__pycache__" / f"{source.stem}.cpython-313.pyc"
        assert compiled.is_file(), f"no bytecode for {source.relative_to(python)}"
        header = compiled.read_bytes()[:8]
        assert header[:4] == CPYTHON_313_MAGIC, compiled
        # PEP 552 flags: hash-based (bit 0), not checked against the source (bit 1 clear)
        assert int.from_bytes(header[4:8], "little") == 0b01, compiled
    assert not [p for p in python.rglob("*.pyc") if ".cpython-313." not in p.name]


# Runs in a fresh interpreter: the compiled packages cannot load here (they are for
# CPython 3.13 on ARM), so this interpreter's own builds of exactly those packages are
# imported first; then every other import must come from the built function and layer.
IMPORT_CHECK = """
import importlib, json, os, sys
function_dir, layer_dir, site_dir, compiled = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
sys.path.insert(0, site_dir)
for name in compiled:
    importlib.import_module(name)
sys.path.remove(site_dir)
sys.path[:0] = [function_dir, layer_dir]
app = importlib.import_module("app")
assert callable(app.lambda_handler)
origins = {}
for name in ("app", "cachesync", "redis", "aws_lambda_powertools"):
    origins[name] = os.path.realpath(sys.modules[name].__file__)
print(json.dumps(origins))
"""


@pytest.mark.parametrize("function", FUNCTIONS)
def test_handler_imports_under_the_built_layout(build_dir: Path, function: str) -> None:
    python = layer_dir(build_dir)
    compiled = sorted({p.relative_to(python).parts[0] for p in python.rglob("*.so")})
    # what the runtime has: the standard library (here 3.11) and boto3, nothing else
    site_dir = next(p for p in map(Path, sys.path) if p.name == "site-packages" and (p / "boto3").is_dir())
    env = {
        "PATH": os.environ.get("PATH", ""),
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "REDIS_URL": "redis://127.0.0.1:6399/0",
        "POWERTOOLS_METRICS_NAMESPACE": "CacheSync",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-S",  # no site-packages: only the built artifacts (and the compiled stand-ins) are importable
            "-c",
            IMPORT_CHECK,
            str(build_dir / function),
            str(python),
            str(site_dir),
            json.dumps(compiled),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=build_dir,
    )
    assert result.returncode == 0, f"{function} does not import from its artifacts:\n{result.stderr[-3000:]}"
    origins = json.loads(result.stdout.strip().splitlines()[-1])
    assert origins["app"] == str((build_dir / function / "app.py").resolve())
    for package in ("cachesync", "redis", "aws_lambda_powertools"):
        assert origins[package].startswith(str(python.resolve())), f"{package} from {origins[package]}"
