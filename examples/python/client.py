"""The whole storage flow from Python, with grpcio and websockets: no AWS
credentials or SigV4 code in the app.

1. CheckStorageReadiness: is the channel set up to record at all?
2. GetSignalingConnection (master): a presigned signaling URL, ICE servers.
3. Open the signaling WebSocket with that URL.
4. JoinStorageSession: KVS sends the storage session's SDP offer on the
   socket (the WebRTC answer, the media part, is out of this example).

The stubs are generated from proto/ with grpcio-tools; this example does it
at start-up into a temporary folder, a real service would do it at build
time:

    python -m grpc_tools.protoc -I../../proto --python_out=. --grpc_python_out=. \
        kvs/webrtcstorage/v1/webrtc_storage.proto

Usage: KVS_SIDECAR_ADDR=127.0.0.1:50051 python client.py CHANNEL_ARN
"""

import base64
import importlib.resources
import json
import os
import pathlib
import importlib.resources
import sys
import tempfile

import grpc
from grpc_tools import protoc
from websockets.sync.client import connect

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


def wait_for_offer(socket, timeout: float) -> dict:
    """The next SDP_OFFER on the signaling socket, its payload decoded."""
    while True:
        message = json.loads(socket.recv(timeout=timeout))
        if message.get("messageType") == "SDP_OFFER":
            message["description"] = json.loads(base64.b64decode(message["messagePayload"]))
            return message


def flow(pb, stub, channel_arn: str) -> int:
    # Every call carries a deadline (seconds): it bounds the sidecar's retries too.
    readiness = stub.CheckStorageReadiness(pb.CheckStorageReadinessRequest(channel_arn=channel_arn), timeout=5)
    if not readiness.ready:
        for problem in readiness.problems:
            print(f"not ready: {problem.code}: {problem.message}")
        return 0
    connection = stub.GetSignalingConnection(
        pb.GetSignalingConnectionRequest(channel_arn=channel_arn, role=pb.SIGNALING_ROLE_MASTER), timeout=5)
    # The URL is a bearer secret until used, like the TURN credentials: never log them.
    print(f"ice servers: {len(connection.ice_servers)}")
    with connect(connection.websocket_url, open_timeout=5) as socket:
        answer = stub.JoinStorageSession(pb.JoinStorageSessionRequest(channel_arn=channel_arn), timeout=5)
        print(f"joined: KVS request id {answer.aws_request_id}")
        offer = wait_for_offer(socket, timeout=10)
        print(f"offer: {offer['description']['type']} from {offer['senderClientId']}")
    return 0


def main(channel_arn: str) -> int:
    with tempfile.TemporaryDirectory() as out:
        pb, rpc = load_stubs(out)
        address = os.environ.get("KVS_SIDECAR_ADDR", "127.0.0.1:50051")
        with grpc.insecure_channel(address) as channel:
            try:
                return flow(pb, rpc.WebRtcStorageServiceStub(channel), channel_arn)
            except grpc.RpcError as err:
                request_id = dict(err.trailing_metadata() or ()).get("x-amzn-requestid", "none")
                what = "try later" if err.code() in RETRY_LATER else "refused"
                print(f"{what}: {err.code().name} ({err.details()}) KVS request id {request_id}")
                return 1 if err.code() == grpc.StatusCode.UNKNOWN else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
