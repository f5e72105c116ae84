"""A minimal OTLP/gRPC trace receiver for tests/traces.rs.

Serves the TraceService generated in the `opentelemetry-proto` package on a
loopback port, prints `listening <port>` once ready, then one JSON line per
received span on stdout: ids in hex, attributes as a flat {key: value}
object, parent_span_id empty for a root span. Runs until killed.

With `--count`, a sink for measuring the cost of traces (docs/performance.md,
Cost of traces): it prints nothing per span, only the total received when it
gets SIGTERM or SIGINT.
"""

import json
import signal
import sys
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2,
    trace_service_pb2_grpc,
)


def value(any_value):
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None
    v = getattr(any_value, kind)
    if kind in ("array_value", "kvlist_value"):
        return str(v)
    if kind == "bytes_value":
        return v.hex()
    return v


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, count_only):
        self.count_only = count_only
        self.received = 0

    def Export(self, request, context):
        if self.count_only:
            self.received += sum(
                len(s.spans) for r in request.resource_spans for s in r.scope_spans
            )
            return trace_service_pb2.ExportTraceServiceResponse()
        for resource_spans in request.resource_spans:
            resource = {a.key: value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    line = {
                        "name": span.name,
                        "kind": span.kind,
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "status_code": span.status.code,
                        "attributes": {a.key: value(a.value) for a in span.attributes},
                        "events": [e.name for e in span.events],
                        "event_attributes": [
                            {a.key: value(a.value) for a in e.attributes} for e in span.events
                        ],
                        "service_name": resource.get("service.name"),
                        "metadata": {k: v for k, v in context.invocation_metadata()},
                    }
                    print(json.dumps(line), flush=True)
        return trace_service_pb2.ExportTraceServiceResponse()


def main():
    receiver = Receiver(count_only="--count" in sys.argv[1:])
    # One worker: Export's counter is not shared between threads.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"listening {port}", flush=True)

    def stop(*_):
        server.stop(None)
        if receiver.count_only:
            print(f"received {receiver.received} spans", flush=True)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.wait_for_termination()


if __name__ == "__main__":
    sys.exit(main())
