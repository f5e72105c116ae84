// The whole storage flow from Node.js, with @grpc/grpc-js and ws: no AWS
// credentials or SigV4 code in the app.
//
// 1. CheckStorageReadiness: is the channel set up to record at all?
// 2. GetSignalingConnection (master): a presigned signaling URL, ICE servers.
// 3. Open the signaling WebSocket with that URL.
// 4. JoinStorageSession: KVS sends the storage session's SDP offer on the
//    socket (the WebRTC answer, the media part, is out of this example).
//
// The client is generated at run time from the contract in proto/ by
// @grpc/proto-loader.
//
//   KVS_SIDECAR_ADDR=127.0.0.1:50051 node client.js CHANNEL_ARN
import { fileURLToPath } from "node:url";
import path from "node:path";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import WebSocket from "ws";

const here = path.dirname(fileURLToPath(import.meta.url));
const definition = protoLoader.loadSync("kvs/webrtcstorage/v1/webrtc_storage.proto", {
  includeDirs: [path.join(here, "../../proto")],
  keepCase: true,
});
const { WebRtcStorageService } = grpc.loadPackageDefinition(definition).kvs.webrtcstorage.v1;

const address = process.env.KVS_SIDECAR_ADDR ?? "127.0.0.1:50051";
const client = new WebRtcStorageService(address, grpc.credentials.createInsecure());

// Every call carries a deadline: it bounds the sidecar's retries too.
function call(method, request, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + timeoutMs);
    client[method](request, { deadline }, (err, answer) => (err ? reject(err) : resolve(answer)));
  });
}

// Opens the signaling WebSocket; resolves once it is open.
function open(url, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url, { handshakeTimeout: timeoutMs });
    socket.once("open", () => resolve(socket));
    socket.once("error", reject);
  });
}

// The next SDP_OFFER on the socket, its payload decoded.
function nextOffer(socket, timeoutMs = 10000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no offer within 10 s")), timeoutMs);
    timer.unref();
    socket.on("message", (data) => {
      const message = JSON.parse(data.toString());
      if (message.messageType !== "SDP_OFFER") return;
      clearTimeout(timer);
      message.description = JSON.parse(Buffer.from(message.messagePayload, "base64").toString());
      resolve(message);
    });
  });
}

function describe(err) {
  const requestId = err.metadata?.get("x-amzn-requestid")[0] ?? "none";
  return `${grpc.status[err.code]} (${err.details}) KVS request id ${requestId}`;
}

async function flow(channelArn) {
  const readiness = await call("CheckStorageReadiness", { channel_arn: channelArn });
  if (!readiness.ready) {
    for (const problem of readiness.problems) console.log(`not ready: ${problem.code}: ${problem.message}`);
    return;
  }
  const connection = await call("GetSignalingConnection", {
    channel_arn: channelArn,
    role: "SIGNALING_ROLE_MASTER",
  });
  // The URL is a bearer secret until used, like the TURN credentials: never log them.
  console.log(`ice servers: ${connection.ice_servers.length}`);
  const socket = await open(connection.websocket_url);
  try {
    const offer = nextOffer(socket);
    offer.catch(() => {}); // awaited below, once the join answered
    const answer = await call("JoinStorageSession", { channel_arn: channelArn });
    console.log(`joined: KVS request id ${answer.aws_request_id}`);
    const { description, senderClientId } = await offer;
    console.log(`offer: ${description.type} from ${senderClientId}`);
  } finally {
    socket.close();
  }
}

const channelArn = process.argv[2];
try {
  await flow(channelArn);
} catch (err) {
  switch (err.code) {
    case grpc.status.NOT_FOUND:
    case grpc.status.PERMISSION_DENIED:
    case grpc.status.INVALID_ARGUMENT:
      // The channel or the request is wrong: retrying will not help.
      console.log(`refused: ${describe(err)}`);
      break;
    case grpc.status.RESOURCE_EXHAUSTED:
    case grpc.status.UNAVAILABLE:
    case grpc.status.DEADLINE_EXCEEDED:
      // The sidecar already retried within the deadline; try again later.
      console.log(`try later: ${describe(err)}`);
      break;
    default:
      console.log(`failed: ${err.code === undefined ? err.message : describe(err)}`);
      process.exitCode = 1;
  }
} finally {
  client.close();
}
