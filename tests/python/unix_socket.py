"""A Python grpcio backend calling kvs-sidecar over its Unix socket.

Usage: unix_socket.py SOCKET_PATH CHANNEL_ARN

grpc-core (since 1.58) sends the percent-encoded socket path as `:authority`
(`tmp%2Fkvs.sock`), which the sidecar's HTTP/2 layer (Rust's h2 crate)
refuses as a malformed authority before any of its code runs: every call
ends with RST_STREAM PROTOCOL_ERROR. Clients set `grpc.default_authority`,
as docs/calling.md says. The second half pins that limitation: when it starts
failing, h2 accepts such authorities and docs/calling.md's caveat can go.
"""

import sys

import grpc

from client import generate


def main(path: str, arn: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        generate(out)
        from kvs.webrtcstorage.v1 import webrtc_storage_pb2 as pb
        from kvs.webrtcstorage.v1 import webrtc_storage_pb2_grpc as rpc

        target = f"unix://{path}"
        options = [("grpc.default_authority", "localhost")]
        with grpc.insecure_channel(target, options=options) as channel:
            stub = rpc.WebRtcStorageServiceStub(channel)
            joined = stub.JoinStorageSession(pb.JoinStorageSessionRequest(channel_arn=arn), timeout=10)
            assert len(joined.aws_request_id) == 36, joined

        with grpc.insecure_channel(target) as channel:
            stub = rpc.WebRtcStorageServiceStub(channel)
            try:
                stub.JoinStorageSession(pb.JoinStorageSessionRequest(channel_arn=arn), timeout=10)
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.INTERNAL, (err.code(), err.details())
                assert "RST_STREAM" in err.details(), err.details()
            else:
                raise AssertionError("grpcio's default authority is accepted now: update the README")
    print("python unix socket client: ok")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
