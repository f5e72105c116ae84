"""Maintains a master's storage session with no_media_after while watching
whether it records, from Python with grpcio: the sidecar reads the
fragments KVS lists for the channel's stream, so the app needs no AWS
access to know its media is stored.

1. MaintainStorageSession with `no_media_after`: the sidecar joins, and
   joins again (reason no_media) when no fragment follows a join within
   that time, or when fragments stop for that long. While fragments arrive
   the session counts as live, even if the app reports nothing.
2. After the first join, WatchRecording (window: from the channel's last
   master join): one status at once, then one at each change of state.
3. The example ends once the recording reaches --until (default
   recording), or after --joins joins, whichever comes first: it ends its
   request stream (the sidecar stops joining) and cancels the watch.

Every line printed is one event, `kind key=value ...`, strings JSON-quoted:

    joined attempt=1 reason=initial aws_request_id="..."
    recording state=no_media fragments=0 recorded=0.000s stream="arn:..."
    recording state=recording fragments=2 recorded=4.000s stream="arn:..."
    joined attempt=2 reason=no_media aws_request_id="..."
    watch_ended status=PERMISSION_DENIED message="..."
    ended status=OK
    refused: NOT_FOUND (...)   (before the stream starts)

Usage: KVS_SIDECAR_ADDR=127.0.0.1:50051 python watch_recording.py
           [--no-media-after S] [--stalled-after S] [--joins N]
           [--until STATE] CHANNEL_ARN
"""

import argparse
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

PROTO = pathlib.Path(__file__).resolve().parents[2] / "proto"

# Events from two threads (the session's and the watch's) print whole lines.
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
    """RECORDING_STATE_NO_MEDIA -> no_media."""
    return enum.Name(value).removeprefix(prefix).lower()


def seconds(duration) -> float:
    return duration.seconds + duration.nanos / 1e9


class Session:
    """The session's request stream: `start`, then nothing until `finish`
    (this app has no signaling connection to report from: the fragments
    are its evidence)."""

    def __init__(self, pb, start):
        self.requests_queue = queue.Queue()
        self.requests_queue.put(pb.MaintainStorageSessionRequest(start=start))
        self.finished = threading.Event()

    def requests(self):
        while True:
            request = self.requests_queue.get()
            if request is None:
                return
            yield request

    def finish(self):
        if not self.finished.is_set():
            self.finished.set()
            self.requests_queue.put(None)


def watch(pb, stub, args, session: Session, calls: list):
    """Prints each recording status; finishes the session at --until."""
    request = pb.WatchRecordingRequest(channel_arn=args.channel_arn)
    request.stalled_after.FromSeconds(args.stalled_after)
    call = stub.WatchRecording(request)
    calls.append(call)
    try:
        for response in call:
            s = response.status
            state = name(pb.RecordingState, s.state, "RECORDING_STATE_")
            say(f"recording state={state} fragments={s.fragment_count} "
                f"recorded={seconds(s.recorded_duration):.3f}s gaps={len(s.gaps)} "
                f"stream={json.dumps(s.stream_arn)}")
            if state == args.until:
                session.finish()
                return
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.CANCELLED:
            say(f"watch_ended status={err.code().name} message={json.dumps(err.details())}")


def run(pb, stub, args) -> int:
    start = pb.SessionStart(channel_arn=args.channel_arn)
    start.no_media_after.FromSeconds(args.no_media_after)
    # Without reports, fragments are what keeps no_offer joins away; give
    # the first ones time to be listed.
    start.offer_wait.FromSeconds(60)
    session = Session(pb, start)
    calls = []
    watcher = None
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
                if watcher is None:
                    watcher = threading.Thread(target=watch, args=(pb, stub, args, session, calls),
                                               daemon=True)
                    watcher.start()
                if joins >= args.joins:
                    session.finish()
            elif kind == "join_failed":
                e = response.join_failed
                say(f"join_failed attempt={e.attempt} message={json.dumps(e.message)}")
            elif kind == "gave_up":
                e = response.gave_up
                say(f"gave_up reason={name(pb.GiveUpReason, e.reason, 'GIVE_UP_REASON_')} "
                    f"message={json.dumps(e.message)}")
        say("ended status=OK")
    except grpc.RpcError as err:
        if err.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT,
                          grpc.StatusCode.PERMISSION_DENIED) and joins == 0:
            say(f"refused: {err.code().name} ({err.details()})")
            return 0
        say(f"ended status={err.code().name} message={json.dumps(err.details())}")
    finally:
        session.finish()
        for call in calls:
            call.cancel()
        if watcher is not None:
            watcher.join(timeout=5)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("channel_arn")
    parser.add_argument("--no-media-after", type=int, default=10, help="seconds (1 to 3600)")
    parser.add_argument("--stalled-after", type=int, default=10, help="seconds (1 to 3600)")
    parser.add_argument("--joins", type=int, default=5, help="stop after this many joins")
    parser.add_argument("--until", default="recording", choices=["recording", "no_media", "stalled"],
                        help="stop once the recording is in this state")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        pb, rpc = load_stubs(out)
        address = os.environ.get("KVS_SIDECAR_ADDR", "127.0.0.1:50051")
        with grpc.insecure_channel(address) as channel:
            return run(pb, rpc.WebRtcStorageServiceStub(channel), args)


if __name__ == "__main__":
    sys.exit(main())
