"""The recording status's two requests as boto3 makes them, against the KVS
emulator: GetDataEndpoint (LIST_FRAGMENTS) on kinesisvideo and
ListFragments on kinesis-video-archived-media, with the range and stream
the sidecar used. tests/it/recording.rs compares what the emulator received
from each. Prints what boto3 parsed of the answers, one line each, then
the errors boto3 reads from the emulator: a stream that does not exist, one
the caller may not list, and a sixth ListFragments within a second.

Usage: python boto3_wire.py ENDPOINT_URL REGION STREAM_ARN START END
(credentials from the usual AWS_* variables).
"""

import sys
from datetime import datetime, timezone

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError


def main() -> int:
    url, region, stream, start, end = sys.argv[1:6]
    kvs = boto3.client("kinesisvideo", endpoint_url=url, region_name=region)
    endpoint = kvs.get_data_endpoint(StreamARN=stream, APIName="LIST_FRAGMENTS")["DataEndpoint"]
    print(f"data_endpoint {endpoint}")
    media = boto3.client("kinesis-video-archived-media", endpoint_url=endpoint, region_name=region)
    at = lambda s: datetime.fromtimestamp(float(s), tz=timezone.utc)
    page = media.list_fragments(
        StreamARN=stream,
        MaxResults=1000,
        FragmentSelector={
            "FragmentSelectorType": "SERVER_TIMESTAMP",
            "TimestampRange": {"StartTimestamp": at(start), "EndTimestamp": at(end)},
        },
    )
    print(f"fragments {len(page['Fragments'])}")

    def error(call):
        try:
            call()
        except ClientError as err:
            return f"{err.response['Error']['Code']} {err.response['ResponseMetadata']['HTTPStatusCode']}"
        return "none"

    other = lambda name: stream.replace(":stream/wire/", f":stream/{name}/")
    print("missing " + error(lambda: kvs.get_data_endpoint(StreamARN=other("nostream-wire"),
                                                           APIName="LIST_FRAGMENTS")))
    once = boto3.client("kinesis-video-archived-media", endpoint_url=endpoint, region_name=region,
                        config=Config(retries={"max_attempts": 1, "mode": "standard"}))
    selector = {"FragmentSelectorType": "SERVER_TIMESTAMP",
                "TimestampRange": {"StartTimestamp": at(start), "EndTimestamp": at(end)}}
    print("denied " + error(lambda: once.list_fragments(StreamARN=other("denystream-wire"),
                                                        FragmentSelector=selector)))
    burst = [error(lambda: once.list_fragments(StreamARN=other("burst"), FragmentSelector=selector))
             for _ in range(6)]
    print("burst " + ",".join(burst))
    return 0


if __name__ == "__main__":
    sys.exit(main())
