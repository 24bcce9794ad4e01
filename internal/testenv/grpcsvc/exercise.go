package grpcsvc

import (
	"context"
	"io"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	testpb "google.golang.org/grpc/interop/grpc_testing"
)

// Exercise runs grpc-go calls to s through addr (a proxy in front of s):
// unary with headers and trailers, an error status with trailers, a large
// message each way (past every flow-control window), client streaming,
// a deadline (the call ends then and the server sees it), bidirectional
// ping-pong (each reply must arrive before the next message
// is sent: a proxy that holds a message back stalls it), and a cancelled
// stream (the server must see the cancellation).
func Exercise(t *testing.T, addr string, s *Server) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMsg), grpc.MaxCallSendMsgSize(MaxMsg)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := testpb.NewTestServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t.Run("unary", func(t *testing.T) {
		var hdr, trl metadata.MD
		resp, err := c.UnaryCall(ctx, &testpb.SimpleRequest{ResponseSize: 100, Payload: payload(10)}, grpc.Header(&hdr), grpc.Trailer(&trl))
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetPayload().GetBody()) != 100 || first(hdr, "x-header") != "h" || first(trl, "x-trailer") != "done" || first(trl, "x-got") != "10" {
			t.Fatalf("got %d bytes, header %v, trailer %v", len(resp.GetPayload().GetBody()), hdr, trl)
		}
	})
	t.Run("status and trailers", func(t *testing.T) {
		var trl metadata.MD
		_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{ResponseStatus: &testpb.EchoStatus{Code: int32(codes.InvalidArgument), Message: "bad thing"}}, grpc.Trailer(&trl))
		if st := status.Convert(err); st.Code() != codes.InvalidArgument || st.Message() != "bad thing" || first(trl, "x-trailer") != "done" {
			t.Fatalf("got %v, trailer %v", err, trl)
		}
	})
	t.Run("large messages", func(t *testing.T) {
		const n = 9 << 20 // past the 4 MiB stream windows, in both directions
		var trl metadata.MD
		resp, err := c.UnaryCall(ctx, &testpb.SimpleRequest{ResponseSize: n, Payload: payload(n)}, grpc.Trailer(&trl))
		if err != nil {
			t.Fatal(err)
		}
		body := resp.GetPayload().GetBody()
		if len(body) != n || first(trl, "x-got") != itoa(n) {
			t.Fatalf("got %d bytes back, server got %v", len(body), trl)
		}
		for i := range body {
			if body[i] != byte(i) {
				t.Fatalf("byte %d is %d", i, body[i])
			}
		}
	})
	t.Run("client streaming", func(t *testing.T) {
		st, err := c.StreamingInputCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for range 20 {
			if err := st.Send(&testpb.StreamingInputCallRequest{Payload: payload(100 << 10)}); err != nil {
				t.Fatal(err)
			}
		}
		resp, err := st.CloseAndRecv()
		if err != nil || resp.AggregatedPayloadSize != 20*100<<10 {
			t.Fatalf("got %v %v", resp, err)
		}
	})
	t.Run("server streaming", func(t *testing.T) {
		req := &testpb.StreamingOutputCallRequest{}
		for i := range 10 {
			req.ResponseParameters = append(req.ResponseParameters, &testpb.ResponseParameters{Size: int32(i * 1000), IntervalUs: 1000})
		}
		st, err := c.StreamingOutputCall(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 10 {
			m, err := st.Recv()
			if err != nil || len(m.GetPayload().GetBody()) != i*1000 {
				t.Fatalf("message %d: %v", i, err)
			}
		}
		if _, err := st.Recv(); err != io.EOF {
			t.Fatalf("after the last message: %v", err)
		}
	})
	t.Run("bidi ping-pong", func(t *testing.T) {
		pctx, pcancel := context.WithTimeout(ctx, 10*time.Second)
		defer pcancel()
		st, err := c.FullDuplexCall(pctx)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 30 {
			if err := st.Send(&testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: int32(i)}}}); err != nil {
				t.Fatal(err)
			}
			m, err := st.Recv()
			if err != nil || len(m.GetPayload().GetBody()) != i {
				t.Fatalf("pong %d: %v (a message held back stalls the ping-pong until the deadline)", i, err)
			}
		}
		st.CloseSend()
		if _, err := st.Recv(); err == nil {
			t.Fatal("stream did not end")
		}
	})
	t.Run("deadline", func(t *testing.T) {
		// The client's deadline (grpc-timeout, then RST_STREAM CANCEL)
		// ends the call at once, and the server sees it end.
		for len(s.Cancelled) > 0 {
			<-s.Cancelled
		}
		dctx, dcancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer dcancel()
		st, err := c.StreamingOutputCall(dctx, &testpb.StreamingOutputCallRequest{
			ResponseParameters: []*testpb.ResponseParameters{{Size: 1, IntervalUs: 20e6}}})
		if err == nil {
			_, err = st.Recv()
		}
		if status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("got %v, want DeadlineExceeded", err)
		}
		select {
		case <-s.Cancelled:
		case <-time.After(10 * time.Second):
			t.Fatal("the server did not see the call end at its deadline")
		}
	})
	t.Run("cancellation reaches the server", func(t *testing.T) {
		for len(s.Cancelled) > 0 {
			<-s.Cancelled
		}
		cctx, ccancel := context.WithCancel(ctx)
		st, err := c.FullDuplexCall(cctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: 1}}}); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Recv(); err != nil {
			t.Fatal(err)
		}
		ccancel()
		select {
		case <-s.Cancelled:
		case <-time.After(10 * time.Second):
			t.Fatal("the server did not see the cancelled stream end")
		}
	})
}

func first(md metadata.MD, k string) string {
	if v := md.Get(k); len(v) > 0 {
		return v[0]
	}
	return ""
}
