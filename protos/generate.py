"""Generate the Python stubs of every .proto under protos/ (run by `make setup`).

    python -m protos.generate [--out DIR]

The stubs land beside their .proto (or under DIR, for the test that checks they are
fresh) and are never committed or edited by hand. grpcio-tools is pinned to the grpcio
version, whose runtime checks the stubs' protobuf version at import.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent


def proto_files() -> list[Path]:
    return sorted((ROOT / "protos").rglob("*.proto"))


def generate(out: Path = ROOT) -> None:
    """Write *_pb2.py, *_pb2.pyi and *_pb2_grpc.py for every .proto, import paths relative
    to the project root (`protos.edis.sampler.v1.sampler_pb2`)."""
    for proto in proto_files():
        relative = proto.relative_to(ROOT)
        args = ["grpc_tools.protoc", f"-I{ROOT}", f"--python_out={out}", f"--pyi_out={out}",
                f"--grpc_python_out={out}", str(proto)]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {relative}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT)
    generate(parser.parse_args().out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
