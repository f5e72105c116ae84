"""Keeps a channel's storage session recorded from Python, with grpcio and
websockets: the sidecar's MaintainStorageSession does the joining and
re-joining, the app holds the signaling WebSocket and says what it sees.

1. GetSignalingConnection (master, or viewer with --client-id): a
   presigned signaling URL. Open the WebSocket with it first: KVS sends
   each join's SDP offer there.
2. MaintainStorageSession: the sidecar joins at once, and again when no
   offer is reported within the offer wait, ahead of KVS's one-hour
   session limit, after a disconnection, or on request.
3. Each SDP_OFFER on the socket is reported as OFFER_RECEIVED.
4. After N joins (--joins) the example ends its request stream, which
   stops the sidecar's re-joining at once; the sidecar then ends the
   stream with OK.

Every line printed is one thing that happened, `kind key=value ...`, with
strings JSON-quoted, so scripts and tests can parse it:

    joined attempt=1 reason=initial aws_request_id="..."
    offer sender="storage-session-..."
    reported OFFER_RECEIVED
    join_failed attempt=2 code=UNAVAILABLE next_attempt_in=1.250s message="..."
    gave_up reason=failure_budget code=OK message="..."
    ended status=OK
    refused: NOT_FOUND (...) KVS request id ...   (before the stream starts)

Usage: KVS_SIDECAR_ADDR=127.0.0.1:50051 python maintain.py [--joins N]
           [--offer-wait S] [--rejoin-after S] [--failure-budget N]
           [--client-id ID] CHANNEL_ARN
"""

import argparse
import base64
import importlib.resources
import json
import os
import pathlib
import queue
import sys
import tempfile
import threading

import grpc
from grpc_tools import protoc
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

PROTO = pathlib.Path(__file__).resolve().parents[2] / "proto"
RETRY_LATER = {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}

# Events from two threads (the socket's and the stream's) print whole lines.
PRINT = threading.Lock()


def say(line: str):
    with PRINT:
        print(line, flush=True)


def load_stubs(out: str):
    # grpc_tools ships the well-known types (google/protobuf/*.proto).
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    protoc.main(["protoc", f"-I{PROTO}", f"-I{well_known}", f"--python_out={out}",
                 f"--grpc_python_out={out}", "kvs/webrtcstorage/v1/webrtc_storage.proto"])
    sys.path.insert(0, out)
    from kvs.webrtcstorage.v1 import webrtc_storage_pb2, webrtc_storage_pb2_grpc
    return webrtc_storage_pb2, webrtc_storage_pb2_grpc


def name(enum, value: int, prefix: str) -> str:
    """JOIN_REASON_NO_OFFER -> no_offer."""
    return enum.Name(value).removeprefix(prefix).lower()


def code_name(code: int) -> str:
    return next((c.name for c in grpc.StatusCode if c.value[0] == code), str(code))


def seconds(duration) -> float:
    return duration.seconds + duration.nanos / 1e9


class Session:
    """One maintained session: the reports going in, ended by `finish`."""

    def __init__(self, pb, start):
        self.pb = pb
        self.reports = queue.Queue()
        self.reports.put(pb.MaintainStorageSessionRequest(start=start))
        self.finished = threading.Event()

    def requests(self):
        # The request stream: `start`, then reports, until `finish`.
        while True:
            request = self.reports.get()
            if request is None:
                return
            yield request

    def report(self, kind: str):
        if self.finished.is_set():
            return
        self.reports.put(self.pb.MaintainStorageSessionRequest(
            report=self.pb.SessionReport(kind=self.pb.SessionReportKind.Value(f"SESSION_REPORT_KIND_{kind}"))))
        say(f"reported {kind}")

    def finish(self):
        self.finished.set()
        self.reports.put(None)


def watch_signaling(socket, session: Session):
    """Reports each SDP offer that arrives on the signaling socket."""
    while not session.finished.is_set():
        try:
            message = json.loads(socket.recv(timeout=0.2))
        except TimeoutError:
            continue
        except ConnectionClosed:
            # A real app reconnects with a fresh URL; the sidecar re-joins
            # on the DISCONNECTED report.
            session.report("DISCONNECTED")
            return
        if session.finished.is_set():
            # Arrived as the session ended: no longer ours to report.
            return
        if message.get("messageType") != "SDP_OFFER":
            continue
        offer = json.loads(base64.b64decode(message["messagePayload"]))
        if offer.get("type") != "offer":
            continue
        say(f"offer sender={json.dumps(message.get('senderClientId', ''))}")
        session.report("OFFER_RECEIVED")
        # Stand-in: a real app answers the offer with its WebRTC stack and
        # reports CONNECTED from its peer connection's state ("connected"),
        # and DISCONNECTED when that drops. This example has no media, so it
        # reports CONNECTED as soon as the offer arrives; the sidecar then
        # re-joins ahead of the session limit (--rejoin-after).
        session.report("CONNECTED")


def maintain(pb, stub, args) -> int:
    role = pb.SIGNALING_ROLE_VIEWER if args.client_id else pb.SIGNALING_ROLE_MASTER
    connection = stub.GetSignalingConnection(pb.GetSignalingConnectionRequest(
        channel_arn=args.channel_arn, role=role, client_id=args.client_id), timeout=5)
    start = pb.SessionStart(channel_arn=args.channel_arn, client_id=args.client_id,
                            failure_budget=args.failure_budget)
    if args.offer_wait:
        start.offer_wait.FromSeconds(args.offer_wait)
    if args.rejoin_after:
        start.rejoin_after.FromSeconds(args.rejoin_after)
    session = Session(pb, start)
    # The URL is a bearer secret until used: never log it.
    with connect(connection.websocket_url, open_timeout=5) as socket:
        watcher = threading.Thread(target=watch_signaling, args=(socket, session), daemon=True)
        watcher.start()
        joins = 0
        try:
            # No deadline: the stream lives as long as the session is kept.
            for response in stub.MaintainStorageSession(session.requests()):
                kind = response.WhichOneof("event")
                if kind == "joined":
                    e = response.joined
                    joins += 1
                    say(f"joined attempt={e.attempt} reason={name(pb.JoinReason, e.reason, 'JOIN_REASON_')} "
                        f"aws_request_id={json.dumps(e.aws_request_id)}")
                    if joins >= args.joins:
                        # Ending the request stream stops the re-joining.
                        session.finish()
                elif kind == "join_failed":
                    e = response.join_failed
                    after = f"{seconds(e.next_attempt_in):.3f}s" if e.HasField("next_attempt_in") else "none"
                    say(f"join_failed attempt={e.attempt} code={code_name(e.code)} next_attempt_in={after} "
                        f"message={json.dumps(e.message)}")
                elif kind == "gave_up":
                    e = response.gave_up
                    say(f"gave_up reason={name(pb.GiveUpReason, e.reason, 'GIVE_UP_REASON_')} "
                        f"code={code_name(e.code)} message={json.dumps(e.message)}")
            say("ended status=OK")
        except grpc.RpcError as err:
            say(f"ended status={err.code().name} message={json.dumps(err.details())}")
        finally:
            session.finish()
            watcher.join(timeout=5)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("channel_arn")
    parser.add_argument("--joins", type=int, default=3, help="stop after this many joins")
    parser.add_argument("--client-id", default="", help="maintain this viewer's session")
    parser.add_argument("--offer-wait", type=int, default=0, help="seconds (sidecar default: 6)")
    parser.add_argument("--rejoin-after", type=int, default=0, help="seconds (sidecar default: 55 min)")
    parser.add_argument("--failure-budget", type=int, default=0, help="failed joins (sidecar default: 5)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        pb, rpc = load_stubs(out)
        address = os.environ.get("KVS_SIDECAR_ADDR", "127.0.0.1:50051")
        with grpc.insecure_channel(address) as channel:
            try:
                return maintain(pb, rpc.WebRtcStorageServiceStub(channel), args)
            except grpc.RpcError as err:
                request_id = dict(err.trailing_metadata() or ()).get("x-amzn-requestid", "none")
                what = "try later" if err.code() in RETRY_LATER else "refused"
                say(f"{what}: {err.code().name} ({err.details()}) KVS request id {request_id}")
                return 1 if err.code() == grpc.StatusCode.UNKNOWN else 0


if __name__ == "__main__":
    sys.exit(main())
