#!/bin/sh
# Regenerates the committed wire code in protos/tocsin/v1 from the .proto files.
# Usage: tools/genproto.sh [OUTDIR]   (default: protos, i.e. in place)
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here/protos}
cd "$here/protos"
python -m grpc_tools.protoc -I. --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
    tocsin/v1/telemetry.proto tocsin/v1/operator.proto
