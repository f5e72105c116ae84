#!/usr/bin/env bash
# Builds examples/go as the tests run it: Debian's Go toolchain and Go
# packages (golang-go, golang-google-grpc-dev, golang-google-protobuf-dev,
# golang-github-golang-protobuf-1-5-dev, protoc-gen-go-grpc,
# protobuf-compiler; .ci/run installs them) in GOPATH mode, since this
# machine reaches no Go module proxy. Users build the same main.go with its
# go.mod and current grpc-go.
#
# Usage: tests/go/build.sh OUT_DIR
# Leaves OUT_DIR/kvs-sidecar-go-example; the generated code and the
# protoc-gen-go it is generated with stay under OUT_DIR (never committed).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="$(mkdir -p "$1" && cd "$1" && pwd)"

export GO111MODULE=off GOFLAGS= GOPATH="$out/gopath:/usr/share/gocode"
export GOCACHE="$out/cache" GOTMPDIR=
for tool in go gofmt protoc protoc-gen-go-grpc; do
  command -v "$tool" >/dev/null || {
    echo "tests/go/build.sh: $tool is missing (.ci/run installs Debian's Go packages)" >&2
    exit 1
  }
done

unformatted="$(gofmt -l "$root/examples/go")"
if [ -n "$unformatted" ]; then
  echo "gofmt would change: $unformatted" >&2
  exit 1
fi

# Debian ships protoc-gen-go only as source.
mkdir -p "$out/bin"
go build -o "$out/bin/protoc-gen-go" google.golang.org/protobuf/cmd/protoc-gen-go

# The example imports the generated package by this path; in GOPATH mode it
# lives under the first GOPATH entry.
pkg=example.com/kvs-sidecar-example/gen/webrtcstoragev1
proto=kvs/webrtcstorage/v1/webrtc_storage.proto
rm -rf "$out/gopath/src/$pkg"
mkdir -p "$out/gopath/src"
PATH="$out/bin:$PATH" protoc -I"$root/proto" \
  --go_out="$out/gopath/src" --go_opt="M$proto=$pkg" \
  --go-grpc_out="$out/gopath/src" --go-grpc_opt="M$proto=$pkg" \
  "$proto"

(cd "$root/examples/go" && go vet . && go build -o "$out/kvs-sidecar-go-example" .)
