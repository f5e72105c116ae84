"""A backend's view of kvs-sidecar: a Python grpcio client generated from
proto/ at run time, calling a running sidecar.

Usage: client.py GRPC_ADDR CHANNEL_ARN
The sidecar's fake KVS is scripted by the caller (tests/serving.rs) so that
the 4th join is slow and the 5th answers ResourceNotFoundException.
"""

import importlib.resources
import pathlib
import sys
import tempfile

import grpc
from grpc_status import rpc_status
import importlib.resources

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parents[2]


def generate(out: str) -> None:
    proto_root = ROOT / "proto"
    rc = protoc.main([
        "grpc_tools.protoc",
        f"-I{proto_root}",
        # grpc_tools ships the well-known types (google/protobuf/*.proto).
        f"-I{importlib.resources.files('grpc_tools') / '_proto'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        str(proto_root / "kvs/webrtcstorage/v1/webrtc_storage.proto"),
    ])
    assert rc == 0, f"protoc failed: {rc}"
    sys.path.insert(0, out)


def expect_error(call, code, text):
    try:
        call()
    except grpc.RpcError as err:
        assert err.code() == code, (err.code(), err.details())
        assert text in err.details(), err.details()
        return err
    raise AssertionError(f"expected {code}")


def main(addr: str, arn: str) -> None:
    with tempfile.TemporaryDirectory() as out:
        generate(out)
        from kvs.webrtcstorage.v1 import webrtc_storage_pb2 as pb
        from kvs.webrtcstorage.v1 import webrtc_storage_pb2_grpc as rpc

        with grpc.insecure_channel(addr) as channel:
            stub = rpc.WebRtcStorageServiceStub(channel)

            joined = stub.JoinStorageSession(pb.JoinStorageSessionRequest(channel_arn=arn), timeout=10)
            assert len(joined.aws_request_id) == 36, joined

            viewer = stub.JoinStorageSessionAsViewer(
                pb.JoinStorageSessionAsViewerRequest(channel_arn=arn, client_id="py-viewer"), timeout=10)
            assert viewer.aws_request_id, viewer

            expect_error(
                lambda: stub.JoinStorageSession(pb.JoinStorageSessionRequest(channel_arn="nope"), timeout=10),
                grpc.StatusCode.INVALID_ARGUMENT, "channel_arn")

            # Joins 2 and 3 above were one master join and one viewer join;
            # the scripted slow answer is the master's second join.
            expect_error(
                lambda: stub.JoinStorageSession(pb.JoinStorageSessionRequest(channel_arn=arn), timeout=0.3),
                grpc.StatusCode.DEADLINE_EXCEEDED, "")

            err = expect_error(
                lambda: stub.JoinStorageSession(pb.JoinStorageSessionRequest(channel_arn=arn), timeout=10),
                grpc.StatusCode.NOT_FOUND, "ResourceNotFoundException")
            trailers = dict(err.trailing_metadata())
            assert len(trailers["x-amzn-requestid"]) == 36, trailers
            status = rpc_status.from_call(err)
            assert status is not None and len(status.details) == 2, status
    print("python client: ok")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
