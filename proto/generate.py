"""Regenerate the Python modules of the inter-node gRPC API from the .proto files beside this script.

    python proto/generate.py            # rewrite proto/merpati/v1/*_pb2*.py in place
    python proto/generate.py OUT_DIR    # write the tree under OUT_DIR instead (the staleness test)

The output depends on the protoc bundled with grpcio-tools, which is why the test extra pins its
version: a different one writes other version stamps into the files and the test fails.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository: protoc names `proto.merpati.v1`
# The folder proto/ installs as the package merpati.proto (pyproject.toml), so the imports protoc
# writes between generated modules are rewritten to that name.
IMPORT_FROM = "from proto."
IMPORT_TO = "from merpati.proto."
PROTOS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "proto").rglob("*.proto"))


def generate(out_dir: Path | str = ROOT) -> list[Path]:
    """Run protoc over every .proto under proto/; returns the files written."""
    import grpc_tools
    from grpc_tools import protoc

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    include = str(Path(grpc_tools.__file__).parent / "_proto")  # google/protobuf/*.proto
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        *PROTOS,
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError(f"protoc failed ({rc}): {' '.join(args)}")
    written = []
    for proto in PROTOS:
        stem = proto[: -len(".proto")]
        written += [out / f"{stem}_pb2.py", out / f"{stem}_pb2_grpc.py"]
    for path in written:
        text = path.read_text()
        path.write_text(text.replace(IMPORT_FROM, IMPORT_TO))
    return written


def main(argv: list[str]) -> int:
    for path in generate(argv[0] if argv else ROOT):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
