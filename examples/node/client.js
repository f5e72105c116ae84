// Calling kvs-sidecar from Node.js with @grpc/grpc-js. The client is
// generated at run time from the contract in proto/ by @grpc/proto-loader.
//
//   KVS_SIDECAR_ADDR=127.0.0.1:50051 node client.js CHANNEL_ARN
import { fileURLToPath } from "node:url";
import path from "node:path";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const here = path.dirname(fileURLToPath(import.meta.url));
const definition = protoLoader.loadSync("kvs/webrtcstorage/v1/webrtc_storage.proto", {
  includeDirs: [path.join(here, "../../proto")],
  keepCase: true,
});
const { WebRtcStorageService } = grpc.loadPackageDefinition(definition).kvs.webrtcstorage.v1;

const address = process.env.KVS_SIDECAR_ADDR ?? "127.0.0.1:50051";
const client = new WebRtcStorageService(address, grpc.credentials.createInsecure());

// Every call carries a deadline: it bounds the sidecar's retries too.
function join(channelArn, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + timeoutMs);
    client.JoinStorageSession({ channel_arn: channelArn }, { deadline }, (err, answer) =>
      err ? reject(err) : resolve(answer),
    );
  });
}

function describe(err) {
  const requestId = err.metadata?.get("x-amzn-requestid")[0] ?? "none";
  return `${grpc.status[err.code]} (${err.details}) KVS request id ${requestId}`;
}

const channelArn = process.argv[2];
try {
  const answer = await join(channelArn);
  console.log(`joined: KVS request id ${answer.aws_request_id}`);
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
      console.log(`failed: ${describe(err)}`);
      process.exitCode = 1;
  }
} finally {
  client.close();
}
