"""The bundled Protobuf schemas, compiled: each `.proto` of cachesync/value_schemas into the
FileDescriptorSet (`.binpb`) beside it, which the layer reads (a Lambda has no protoc).

    python -m devkit.value_schemas           # write them again (make value-schemas)
    python -m devkit.value_schemas --check   # fail when one is missing or stale

protoc comes with grpcio-tools (requirements-dev.txt).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cachesync.values import BUNDLED_SCHEMAS


def compile_proto(proto: Path) -> bytes:
    """The FileDescriptorSet protoc writes for one .proto file (no source info: stable bytes)."""
    from grpc_tools import protoc  # type: ignore[import-untyped]

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "set.binpb"
        status = protoc.main(
            ["protoc", f"--proto_path={proto.parent}", f"--descriptor_set_out={out}", "--include_imports", proto.name]
        )
        if status != 0:
            raise RuntimeError(f"protoc could not compile {proto}")
        return out.read_bytes()


def stale(folder: Path = BUNDLED_SCHEMAS) -> list[Path]:
    """The descriptor sets that are missing or differ from what their .proto compiles to."""
    return [
        proto.with_suffix(".binpb")
        for proto in sorted(folder.glob("*.proto"))
        if not proto.with_suffix(".binpb").exists() or proto.with_suffix(".binpb").read_bytes() != compile_proto(proto)
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compile the bundled .proto value schemas into descriptor sets.")
    parser.add_argument("--check", action="store_true", help="only report missing or stale descriptor sets")
    args = parser.parse_args(argv)
    if args.check:
        outdated = stale()
        for path in outdated:
            print(f"{path} is missing or stale: run make value-schemas", file=sys.stderr)
        return 1 if outdated else 0
    for proto in sorted(BUNDLED_SCHEMAS.glob("*.proto")):
        proto.with_suffix(".binpb").write_bytes(compile_proto(proto))
        print(f"wrote {proto.with_suffix('.binpb')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
