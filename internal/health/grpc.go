package health

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

// The grpc health check speaks just enough gRPC to call
// grpc.health.v1.Health/Check over cleartext HTTP/2, so the agent does not
// link google.golang.org/grpc (`go list -deps ./cmd/fogmesh-agent` stays
// free of it).
//
// Wire layout of one gRPC message (gRPC over HTTP/2, "Length-Prefixed-Message"):
//
//	byte 0     compressed flag (0: not compressed; we never compress)
//	bytes 1-4  message length, big endian
//	bytes 5-   the protobuf message
//
// HealthCheckRequest  { string service = 1; }  → tag 0x0a, varint length, bytes
// HealthCheckResponse { ServingStatus status = 1; } → tag 0x08, varint
// with UNKNOWN = 0, SERVING = 1, NOT_SERVING = 2, SERVICE_UNKNOWN = 3.
// The call's outcome is the grpc-status trailer (or header, in a
// trailers-only response); 0 is OK.

const (
	grpcHealthPath   = "/grpc.health.v1.Health/Check"
	grpcServing      = 1
	grpcMaxHealthMsg = 1 << 10 // a HealthCheckResponse is 2 bytes; refuse silly sizes
)

var grpcStatusNames = [...]string{"UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"}

// grpcHealthRequest frames HealthCheckRequest{service}.
func grpcHealthRequest(service string) []byte {
	var msg []byte
	if service != "" {
		msg = append(msg, 0x0a)
		msg = binary.AppendUvarint(msg, uint64(len(service)))
		msg = append(msg, service...)
	}
	out := make([]byte, 5, 5+len(msg))
	binary.BigEndian.PutUint32(out[1:], uint32(len(msg)))
	return append(out, msg...)
}

// parseGRPCHealthResponse reads one framed HealthCheckResponse and returns
// its status (0 when absent, as protobuf encodes the default). Unknown
// fields are skipped as protobuf requires.
func parseGRPCHealthResponse(b []byte) (uint64, error) {
	if len(b) < 5 {
		return 0, fmt.Errorf("grpc: short message frame (%d bytes)", len(b))
	}
	if b[0] != 0 {
		return 0, errors.New("grpc: compressed response")
	}
	n := binary.BigEndian.Uint32(b[1:5])
	if n > grpcMaxHealthMsg || int(n) != len(b)-5 {
		return 0, fmt.Errorf("grpc: message length %d, frame holds %d", n, len(b)-5)
	}
	msg := b[5:]
	var status uint64
	for len(msg) > 0 {
		key, k := binary.Uvarint(msg)
		if k <= 0 {
			return 0, errors.New("grpc: bad field key")
		}
		msg = msg[k:]
		switch wire := key & 7; wire {
		case 0: // varint
			v, k := binary.Uvarint(msg)
			if k <= 0 {
				return 0, errors.New("grpc: bad varint")
			}
			msg = msg[k:]
			if key>>3 == 1 {
				status = v
			}
		case 1, 5: // fixed64, fixed32
			size := 8
			if wire == 5 {
				size = 4
			}
			if len(msg) < size {
				return 0, errors.New("grpc: truncated field")
			}
			msg = msg[size:]
		case 2: // length-delimited
			l, k := binary.Uvarint(msg)
			if k <= 0 || l > uint64(len(msg)-k) {
				return 0, errors.New("grpc: bad length")
			}
			msg = msg[k+int(l):]
		default:
			return 0, fmt.Errorf("grpc: wire type %d", wire)
		}
	}
	return status, nil
}

// newGRPCClient returns a client that speaks only cleartext HTTP/2.
func newGRPCClient(timeout time.Duration) *http.Client {
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	return &http.Client{Timeout: timeout, Transport: &http.Transport{Protocols: &protos, Proxy: nil}}
}

// checkGRPC calls Health/Check on addr (host:port) and returns nil only
// for SERVING.
func checkGRPC(ctx context.Context, client *http.Client, addr, service string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, (&url.URL{Scheme: "http", Host: addr, Path: grpcHealthPath}).String(),
		bytes.NewReader(grpcHealthRequest(service)))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("Te", "trailers")
	req.Header.Set("User-Agent", userAgent)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("grpc: http status %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 5+grpcMaxHealthMsg+1))
	if err != nil {
		return fmt.Errorf("grpc: reading response: %w", err)
	}
	code := resp.Trailer.Get("Grpc-Status")
	if code == "" {
		code = resp.Header.Get("Grpc-Status") // trailers-only
	}
	if code != "0" {
		msg := resp.Trailer.Get("Grpc-Message")
		if msg == "" {
			msg = resp.Header.Get("Grpc-Message")
		}
		if code == "" {
			code = "missing"
		}
		return fmt.Errorf("grpc: status %s %q", code, msg)
	}
	st, err := parseGRPCHealthResponse(body)
	if err != nil {
		return err
	}
	if st != grpcServing {
		name := fmt.Sprint(st)
		if st < uint64(len(grpcStatusNames)) {
			name = grpcStatusNames[st]
		}
		return fmt.Errorf("grpc: health status %s", name)
	}
	return nil
}
