"""Calling kvs-sidecar from Python with grpcio.

The stubs are generated from proto/ with grpcio-tools; this example does it
at start-up into a temporary folder, a real service would do it at build
time:

    python -m grpc_tools.protoc -I../../proto --python_out=. --grpc_python_out=. \
        kvs/webrtcstorage/v1/webrtc_storage.proto

Usage: KVS_SIDECAR_ADDR=127.0.0.1:50051 python client.py CHANNEL_ARN
"""

import os
import pathlib
import importlib.resources
import sys
import tempfile

import grpc
from grpc_tools import protoc

PROTO = pathlib.Path(__file__).resolve().parents[2] / "proto"
RETRY_LATER = {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


def load_stubs(out: str):
    # grpc_tools ships the well-known types (google/protobuf/*.proto).
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    protoc.main(["protoc", f"-I{PROTO}", f"-I{well_known}", f"--python_out={out}",
                 f"--grpc_python_out={out}", "kvs/webrtcstorage/v1/webrtc_storage.proto"])
    sys.path.insert(0, out)
    from kvs.webrtcstorage.v1 import webrtc_storage_pb2, webrtc_storage_pb2_grpc
    return webrtc_storage_pb2, webrtc_storage_pb2_grpc


def main(channel_arn: str) -> int:
    with tempfile.TemporaryDirectory() as out:
        pb, rpc = load_stubs(out)
        address = os.environ.get("KVS_SIDECAR_ADDR", "127.0.0.1:50051")
        with grpc.insecure_channel(address) as channel:
            stub = rpc.WebRtcStorageServiceStub(channel)
            try:
                # The deadline (seconds) bounds the sidecar's retries too.
                answer = stub.JoinStorageSession(pb.JoinStorageSessionRequest(channel_arn=channel_arn), timeout=5)
                print(f"joined: KVS request id {answer.aws_request_id}")
            except grpc.RpcError as err:
                request_id = dict(err.trailing_metadata() or ()).get("x-amzn-requestid", "none")
                what = "try later" if err.code() in RETRY_LATER else "refused"
                print(f"{what}: {err.code().name} ({err.details()}) KVS request id {request_id}")
                if err.code() == grpc.StatusCode.UNKNOWN:
                    return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
