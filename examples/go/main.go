// Calling kvs-sidecar from Go with google.golang.org/grpc.
//
// Generate the client from the contract first (protoc, protoc-gen-go and
// protoc-gen-go-grpc on PATH):
//
//	go generate ./...
//	KVS_SIDECAR_ADDR=127.0.0.1:50051 go run . CHANNEL_ARN
package main

// grpc.Dial with grpc.WithInsecure() is used rather than grpc.NewClient and
// credentials/insecure so that one source builds with current grpc-go (which
// deprecates Dial and WithInsecure but keeps them) and with the grpc-go 1.33
// that Debian ships (which has neither NewClient nor credentials/insecure),
// as the kvs-sidecar tests build it.
//
//go:generate protoc -I../../proto --go_out=. --go-grpc_out=. --go_opt=module=example.com/kvs-sidecar-example --go-grpc_opt=module=example.com/kvs-sidecar-example --go_opt=Mkvs/webrtcstorage/v1/webrtc_storage.proto=example.com/kvs-sidecar-example/gen/webrtcstoragev1 --go-grpc_opt=Mkvs/webrtcstorage/v1/webrtc_storage.proto=example.com/kvs-sidecar-example/gen/webrtcstoragev1 kvs/webrtcstorage/v1/webrtc_storage.proto

import (
	"context"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "example.com/kvs-sidecar-example/gen/webrtcstoragev1"
)

func main() {
	addr := os.Getenv("KVS_SIDECAR_ADDR")
	if addr == "" {
		addr = "127.0.0.1:50051"
	}
	// Plaintext: the sidecar listens on loopback. Use
	// grpc.WithTransportCredentials instead when it serves TLS (--tls-cert).
	conn, err := grpc.Dial(addr, grpc.WithInsecure())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer conn.Close()
	client := pb.NewWebRtcStorageServiceClient(conn)

	// The deadline bounds the sidecar's retries too.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	var trailer metadata.MD
	answer, err := client.JoinStorageSession(ctx, &pb.JoinStorageSessionRequest{ChannelArn: os.Args[1]}, grpc.Trailer(&trailer))
	if err == nil {
		fmt.Println("joined: KVS request id", answer.GetAwsRequestId())
		return
	}
	requestID := "none"
	if ids := trailer.Get("x-amzn-requestid"); len(ids) > 0 {
		requestID = ids[0]
	}
	st := status.Convert(err)
	switch st.Code() {
	case codes.NotFound, codes.PermissionDenied, codes.InvalidArgument:
		fmt.Printf("refused: %s (%s) KVS request id %s\n", st.Code(), st.Message(), requestID)
	case codes.ResourceExhausted, codes.Unavailable, codes.DeadlineExceeded:
		fmt.Printf("try later: %s (%s) KVS request id %s\n", st.Code(), st.Message(), requestID)
	default:
		fmt.Printf("failed: %s (%s) KVS request id %s\n", st.Code(), st.Message(), requestID)
		os.Exit(1)
	}
}
