"""Provision storage, record, and play back, from Python: no AWS code in the app.

1. EnsureStorage: a stream for the channel, linked with storage enabled
   (the sidecar needs --allow-storage-changes). Idempotent: a second run
   changes nothing.
2. GetSignalingConnection, the signaling WebSocket, JoinStorageSession:
   the master joins, so the channel's media is recorded (the WebRTC answer,
   the media part, is out of this example).
3. WatchRecording: the recording's state from the fragments KVS lists,
   once at once and then at each change, until it is RECORDING.
4. GetPlaybackUrl: a new HLS URL, fetched as a player would. The URL holds
   a session token: hand it to one player, never log or share it; KVS keeps
   10 live playback sessions per stream and ends the oldest.

Usage: KVS_SIDECAR_ADDR=127.0.0.1:50051 python playback.py CHANNEL_ARN
"""

import os
import sys
import tempfile
import urllib.request

import grpc
from websockets.sync.client import connect

from client import RETRY_LATER, load_stubs, wait_for_offer


def provision(pb, stub, channel_arn: str) -> None:
    ensured = stub.EnsureStorage(pb.EnsureStorageRequest(channel_arn=channel_arn, retention_hours=24), timeout=30)
    changes = [pb.StorageChange.Name(c) for c in ensured.changes] or ["in place"]
    print(f"storage: {', '.join(changes)}")


def join(pb, stub, channel_arn: str) -> None:
    connection = stub.GetSignalingConnection(
        pb.GetSignalingConnectionRequest(channel_arn=channel_arn, role=pb.SIGNALING_ROLE_MASTER), timeout=5)
    with connect(connection.websocket_url, open_timeout=5) as socket:
        answer = stub.JoinStorageSession(pb.JoinStorageSessionRequest(channel_arn=channel_arn), timeout=5)
        print(f"joined: KVS request id {answer.aws_request_id}")
        wait_for_offer(socket, timeout=10)


def watch_until_recording(pb, stub, channel_arn: str, within: float = 30) -> None:
    """Follows WatchRecording until the channel's media is being stored."""
    watch = stub.WatchRecording(pb.WatchRecordingRequest(channel_arn=channel_arn), timeout=within)
    try:
        for event in watch:
            if event.status.state == pb.RECORDING_STATE_RECORDING:
                print(f"recording: {pb.RecordingState.Name(event.status.state)}")
                return
    finally:
        watch.cancel()


def playback_url(pb, stub, channel_arn: str):
    """A new LIVE HLS URL: one per player, never cached or shared."""
    return stub.GetPlaybackUrl(pb.GetPlaybackUrlRequest(
        channel_arn=channel_arn, protocol=pb.PLAYBACK_PROTOCOL_HLS, mode=pb.PLAYBACK_MODE_LIVE), timeout=5)


def flow(pb, stub, channel_arn: str) -> int:
    provision(pb, stub, channel_arn)
    join(pb, stub, channel_arn)
    watch_until_recording(pb, stub, channel_arn)
    playback = playback_url(pb, stub, channel_arn)
    # A player would open the URL; fetch the master playlist as it would.
    with urllib.request.urlopen(playback.url, timeout=5) as playlist:
        print(f"playlist: {playlist.read().decode().splitlines()[0]}")
    return 0


def main(channel_arn: str) -> int:
    with tempfile.TemporaryDirectory() as out:
        pb, rpc = load_stubs(out)
        address = os.environ.get("KVS_SIDECAR_ADDR", "127.0.0.1:50051")
        with grpc.insecure_channel(address) as channel:
            try:
                return flow(pb, rpc.WebRtcStorageServiceStub(channel), channel_arn)
            except grpc.RpcError as err:
                what = "try later" if err.code() in RETRY_LATER else "refused"
                print(f"{what}: {err.code().name} ({err.details()})")
                return 1 if err.code() == grpc.StatusCode.UNKNOWN else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
