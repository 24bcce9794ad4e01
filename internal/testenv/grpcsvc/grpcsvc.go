// Package grpcsvc is a grpc-go test service (grpc.testing.TestService) on
// a loopback listener, for tests of the HTTP/2 paths: unary calls with a
// chosen status and trailers, server, client and bidirectional streaming,
// payloads of any size, and a record of calls the client cancelled. It is
// imported only by tests.
package grpcsvc

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	testpb "google.golang.org/grpc/interop/grpc_testing"
)

// MaxMsg is the largest message either side accepts (grpc-go's default
// is 4 MiB; the tests send more, past every flow-control window).
const MaxMsg = 64 << 20

// Server is a running test service.
type Server struct {
	testpb.UnimplementedTestServiceServer
	GRPC *grpc.Server
	Addr string
	// Cancelled gets a value when a streaming call ends because its
	// client went away (its context was cancelled).
	Cancelled chan struct{}
}

// Start serves the test service on 127.0.0.1:0 until the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{GRPC: grpc.NewServer(grpc.MaxRecvMsgSize(MaxMsg), grpc.MaxSendMsgSize(MaxMsg)),
		Addr: ln.Addr().String(), Cancelled: make(chan struct{}, 16)}
	testpb.RegisterTestServiceServer(s.GRPC, s)
	go s.GRPC.Serve(ln)
	t.Cleanup(s.GRPC.Stop)
	return s
}

func payload(n int32) *testpb.Payload {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i)
	}
	return &testpb.Payload{Body: b}
}

// UnaryCall answers ResponseSize bytes with trailer x-trailer: done, or
// the ResponseStatus asked for.
func (s *Server) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	grpc.SetHeader(ctx, metadata.Pairs("x-header", "h"))
	grpc.SetTrailer(ctx, metadata.Pairs("x-trailer", "done", "x-got", itoa(len(req.GetPayload().GetBody()))))
	if st := req.GetResponseStatus(); st != nil && st.Code != 0 {
		return nil, status.Error(codes.Code(st.Code), st.Message)
	}
	return &testpb.SimpleResponse{Payload: payload(req.ResponseSize)}, nil
}

// StreamingOutputCall sends one message per ResponseParameters, each after
// its interval.
func (s *Server) StreamingOutputCall(req *testpb.StreamingOutputCallRequest, stream testpb.TestService_StreamingOutputCallServer) error {
	for _, p := range req.ResponseParameters {
		if err := s.wait(stream.Context(), p.IntervalUs); err != nil {
			return err
		}
		if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: payload(p.Size)}); err != nil {
			return err
		}
	}
	return nil
}

// StreamingInputCall sums the sizes of the payloads received.
func (s *Server) StreamingInputCall(stream testpb.TestService_StreamingInputCallServer) error {
	var n int32
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			return stream.SendAndClose(&testpb.StreamingInputCallResponse{AggregatedPayloadSize: n})
		}
		if err != nil {
			return err
		}
		n += int32(len(m.GetPayload().GetBody()))
	}
}

// FullDuplexCall answers every message at once with its ResponseParameters.
func (s *Server) FullDuplexCall(stream testpb.TestService_FullDuplexCallServer) error {
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			if stream.Context().Err() != nil {
				s.Cancelled <- struct{}{}
			}
			return err
		}
		for _, p := range m.ResponseParameters {
			if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: payload(p.Size)}); err != nil {
				return err
			}
		}
	}
}

// wait sleeps us microseconds, or records a cancelled call.
func (s *Server) wait(ctx context.Context, us int32) error {
	if us <= 0 {
		return nil
	}
	t := time.NewTimer(time.Duration(us) * time.Microsecond)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		s.Cancelled <- struct{}{}
		return ctx.Err()
	}
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}
