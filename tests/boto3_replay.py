"""Replays requests the sidecar sent with boto3, against the KVS emulator, so
tests can compare what boto3 (botocore's models) puts on the wire with what
the sidecar did: tests/it/storage.rs and tests/it/playback.rs.

Reads JSON lines on stdin: {"service": "kinesisvideo" or
"kinesis-video-archived-media", "operation": "CreateStream", "params":
{...}}; the params are the sidecar's request body, which boto3 validates
against its model (unknown or missing members, wrong types fail here) and
serializes again. Prints one line per request: `OPERATION ok` or
`OPERATION error CODE` (KVS's refusal is fine: the request was sent).

Usage: python boto3_replay.py ENDPOINT_URL REGION < requests.jsonl
(credentials from the usual AWS_* variables).
"""

import json
import sys

import boto3
from botocore import xform_name
from botocore.exceptions import ClientError


def main() -> int:
    url, region = sys.argv[1:3]
    clients = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        service = request["service"]
        if service not in clients:
            clients[service] = boto3.client(service, endpoint_url=url, region_name=region)
        method = getattr(clients[service], xform_name(request["operation"]))
        try:
            method(**request["params"])
            print(f"{request['operation']} ok")
        except ClientError as err:
            print(f"{request['operation']} error {err.response['Error']['Code']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
