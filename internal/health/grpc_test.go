package health

import (
	"bytes"
	"strings"
	"testing"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"
)

// TestGRPCHealthCodec: the hand-written encoding matches protobuf's bytes,
// and the decoder reads protobuf's output, skips unknown fields and refuses
// broken frames.
func TestGRPCHealthCodec(t *testing.T) {
	for _, svc := range []string{"", "app", strings.Repeat("s", 200)} {
		want, err := proto.Marshal(&healthpb.HealthCheckRequest{Service: svc})
		if err != nil {
			t.Fatal(err)
		}
		if got := grpcHealthRequest(svc); !bytes.Equal(got[5:], want) || int(got[4])|int(got[3])<<8 != len(want) || got[0] != 0 {
			t.Fatalf("service %q: framed %x, protobuf %x", svc, got, want)
		}
	}
	frame := func(msg []byte) []byte {
		return append([]byte{0, 0, 0, 0, byte(len(msg))}, msg...)
	}
	for st := range grpcStatusNames {
		msg, _ := proto.Marshal(&healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_ServingStatus(st)})
		if got, err := parseGRPCHealthResponse(frame(msg)); err != nil || got != uint64(st) {
			t.Fatalf("status %d: got %d %v", st, got, err)
		}
	}
	for _, c := range []struct {
		name string
		b    []byte
		ok   bool
	}{
		{"unknown fields skipped", frame([]byte{0x12, 2, 'h', 'i', 0x19, 1, 2, 3, 4, 5, 6, 7, 8, 0x25, 1, 2, 3, 4, 0x08, 1}), true},
		{"short frame", []byte{0, 0, 0}, false},
		{"compressed", []byte{1, 0, 0, 0, 0}, false},
		{"length beyond frame", []byte{0, 0, 0, 0, 9, 0x08}, false},
		{"truncated varint", frame([]byte{0x08, 0x80}), false},
		{"length-delimited too long", frame([]byte{0x12, 9, 'x'}), false},
		{"group wire type", frame([]byte{0x0b}), false},
	} {
		st, err := parseGRPCHealthResponse(c.b)
		if (err == nil) != c.ok || (c.ok && st != grpcServing) {
			t.Errorf("%s: status %d, err %v", c.name, st, err)
		}
	}
}

// FuzzGRPCHealthResponse: no frame crashes the decoder.
func FuzzGRPCHealthResponse(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 2, 0x08, 1})
	f.Add([]byte{0, 0, 0, 0, 3, 0x12, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) { parseGRPCHealthResponse(b) })
}
