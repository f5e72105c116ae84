// Provision storage, record, and play back, from Node.js: no AWS code in
// the app.
//
// 1. EnsureStorage: a stream for the channel, linked with storage enabled
//    (the sidecar needs --allow-storage-changes). Idempotent.
// 2. GetSignalingConnection, the signaling WebSocket, JoinStorageSession:
//    the master joins, so the channel's media is recorded.
// 3. WatchRecording: the recording's state from the fragments KVS lists,
//    at once and then at each change, until it is RECORDING.
// 4. GetPlaybackUrl: a new HLS URL, fetched as a player would. The URL holds
//    a session token: hand it to one player, never log or share it; KVS
//    keeps 10 live playback sessions per stream and ends the oldest.
//
//   KVS_SIDECAR_ADDR=127.0.0.1:50051 node playback.js CHANNEL_ARN
import { fileURLToPath } from "node:url";
import path from "node:path";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import WebSocket from "ws";

const here = path.dirname(fileURLToPath(import.meta.url));
const definition = protoLoader.loadSync("kvs/webrtcstorage/v1/webrtc_storage.proto", {
  includeDirs: [path.join(here, "../../proto")],
  keepCase: true,
  enums: String, // StorageChange values by name
  arrays: true, // an empty "changes" as []
});
const { WebRtcStorageService } = grpc.loadPackageDefinition(definition).kvs.webrtcstorage.v1;

const address = process.env.KVS_SIDECAR_ADDR ?? "127.0.0.1:50051";
const client = new WebRtcStorageService(address, grpc.credentials.createInsecure());

// Every call carries a deadline: it bounds the sidecar's work too.
function call(method, request, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + timeoutMs);
    client[method](request, { deadline }, (err, answer) => (err ? reject(err) : resolve(answer)));
  });
}

function open(url, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url, { handshakeTimeout: timeoutMs });
    socket.once("open", () => resolve(socket));
    socket.once("error", reject);
  });
}

async function provision(channelArn) {
  const ensured = await call("EnsureStorage", { channel_arn: channelArn, retention_hours: 24 }, 30000);
  console.log(`storage: ${ensured.changes.length ? ensured.changes.join(", ") : "in place"}`);
}

async function join(channelArn) {
  const connection = await call("GetSignalingConnection", {
    channel_arn: channelArn,
    role: "SIGNALING_ROLE_MASTER",
  });
  const socket = await open(connection.websocket_url);
  try {
    const answer = await call("JoinStorageSession", { channel_arn: channelArn });
    console.log(`joined: KVS request id ${answer.aws_request_id}`);
  } finally {
    socket.close();
  }
}

// Follows WatchRecording until the channel's media is being stored.
function watchUntilRecording(channelArn, withinMs = 30000) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + withinMs);
    const watch = client.WatchRecording({ channel_arn: channelArn }, { deadline });
    let done = false;
    watch.on("data", ({ status }) => {
      if (status.state !== "RECORDING_STATE_RECORDING" || done) return;
      done = true;
      console.log(`recording: ${status.state}`);
      watch.cancel();
      resolve();
    });
    watch.on("error", (err) => {
      if (!done) reject(err);
    });
    watch.on("end", () => {
      if (!done) reject(new Error("the watch ended before the recording started"));
    });
  });
}

// A new LIVE HLS URL: one per player, never cached or shared.
function playbackUrl(channelArn) {
  return call("GetPlaybackUrl", {
    channel_arn: channelArn,
    protocol: "PLAYBACK_PROTOCOL_HLS",
    mode: "PLAYBACK_MODE_LIVE",
  });
}

async function flow(channelArn) {
  await provision(channelArn);
  await join(channelArn);
  await watchUntilRecording(channelArn);
  const playback = await playbackUrl(channelArn);
  // A player would open the URL; fetch the master playlist as it would.
  const playlist = await fetch(playback.url, { signal: AbortSignal.timeout(5000) });
  console.log(`playlist: ${(await playlist.text()).split("\n")[0]}`);
}

try {
  await flow(process.argv[2]);
} catch (err) {
  const known = {
    [grpc.status.NOT_FOUND]: "refused",
    [grpc.status.PERMISSION_DENIED]: "refused",
    [grpc.status.INVALID_ARGUMENT]: "refused",
    [grpc.status.FAILED_PRECONDITION]: "refused",
    [grpc.status.RESOURCE_EXHAUSTED]: "try later",
    [grpc.status.UNAVAILABLE]: "try later",
    [grpc.status.DEADLINE_EXCEEDED]: "try later",
  };
  const what = known[err.code];
  if (what) {
    console.log(`${what}: ${grpc.status[err.code]} (${err.details})`);
  } else {
    console.log(`failed: ${err.code === undefined ? err.message : err.details}`);
    process.exitCode = 1;
  }
} finally {
  client.close();
}
