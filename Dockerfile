# kvs-sidecar: a release build on Debian, run on distroless (glibc + CA
# certificates, no shell) as a non-root numeric user.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked && cp target/release/kvs-sidecar /kvs-sidecar

FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="kvs-sidecar" \
      org.opencontainers.image.description="gRPC sidecar for the Amazon Kinesis Video Streams WebRTC Storage API" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/kvs-sidecar/kvs-sidecar"
COPY --from=build /kvs-sidecar /usr/local/bin/kvs-sidecar
USER 65532:65532
EXPOSE 50051 9901
ENV KVS_SIDECAR_LOG_FORMAT=json
ENTRYPOINT ["/usr/local/bin/kvs-sidecar"]
