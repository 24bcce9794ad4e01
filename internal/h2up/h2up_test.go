package h2up_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/fogmesh/fogmesh/internal/h2up"
	"github.com/fogmesh/fogmesh/internal/testenv/grpcsvc"
)

// dialer dials the address in target, counting dials.
type dialer struct {
	target atomic.Value // string
	dials  atomic.Int64
}

func (d *dialer) dial(ctx context.Context) (net.Conn, error) {
	d.dials.Add(1)
	var nd net.Dialer
	return nd.DialContext(ctx, "tcp", d.target.Load().(string))
}

// startProxy serves h2c (and HTTP/1.1) on a loopback port and forwards
// every request through pool, as the agent's L7 path does. A failed gRPC
// request is answered as the agent answers it (trailers only): a stream
// the server cancelled after the call's grpc-timeout is
// DEADLINE_EXCEEDED, anything else UNAVAILABLE. (With ReverseProxy's bare
// 502, a call whose deadline the server's timer ends a moment before the
// client's ends Unavailable.)
func startProxy(t *testing.T, pool *h2up.Pool) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &protos, Handler: &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme, pr.Out.URL.Host = "http", pr.In.Host
		},
		Transport:     pool,
		FlushInterval: -1,
		ErrorHandler:  grpcErrorHandler,
	}}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close(); pool.Close() })
	return ln.Addr().String()
}

func grpcErrorHandler(w http.ResponseWriter, r *http.Request, err error) {
	if !strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
		w.WriteHeader(http.StatusBadGateway)
		return
	}
	code := "14"
	var se *h2up.StreamError
	if errors.As(err, &se) && se.Code == http2.ErrCodeCancel && r.Header.Get("Grpc-Timeout") != "" {
		code = "4"
	}
	w.Header().Set("Content-Type", "application/grpc")
	w.Header().Set("Grpc-Status", code)
	w.Header().Set("Grpc-Message", err.Error())
	w.WriteHeader(http.StatusOK)
}

// TestGRPCThroughPool: grpc-go calls through a ReverseProxy whose upstream
// is the pool: unary, status and trailers, large messages past the flow
// control windows, client, server and bidirectional streaming, and a
// cancellation reaching the server (grpcsvc.Exercise). Two sequential
// calls share one connection.
func TestGRPCThroughPool(t *testing.T) {
	s := grpcsvc.Start(t)
	d := &dialer{}
	d.target.Store(s.Addr)
	pool := h2up.New(h2up.Config{Dial: d.dial})
	addr := startProxy(t, pool)
	grpcsvc.Exercise(t, addr, s)
	if n := d.dials.Load(); n != 1 {
		t.Errorf("%d upstream connections for sequential calls, want 1", n)
	}
}

// TestGoAwayDrainsConnection: a server that shuts down gracefully sends
// GOAWAY; the stream in flight on its connection still completes, and the
// next call goes over a new connection (to the other server), not the one
// going away.
func TestGoAwayDrainsConnection(t *testing.T) {
	a, b := grpcsvc.Start(t), grpcsvc.Start(t)
	d := &dialer{}
	d.target.Store(a.Addr)
	pool := h2up.New(h2up.Config{Dial: d.dial})
	addr := startProxy(t, pool)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := testpb.NewTestServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := c.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ping := func() error {
		if err := st.Send(&testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: 3}}}); err != nil {
			return err
		}
		_, err := st.Recv()
		return err
	}
	if err := ping(); err != nil {
		t.Fatal(err)
	}
	d.target.Store(b.Addr)
	stopped := make(chan struct{})
	go func() { a.GRPC.GracefulStop(); close(stopped) }() // GOAWAY; waits for the stream
	// The next call goes to b once the pool has seen a's GOAWAY; a call
	// sent on a's connection after it would be refused (and fail here).
	deadline := time.Now().Add(10 * time.Second)
	for d.dials.Load() < 2 {
		if time.Now().After(deadline) {
			t.Fatal("no new connection after GOAWAY")
		}
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := c.UnaryCall(cctx, &testpb.SimpleRequest{ResponseSize: 1})
		ccancel()
		if err != nil && d.dials.Load() >= 2 {
			t.Fatalf("call after GOAWAY: %v", err)
		}
	}
	if _, err := c.UnaryCall(ctx, &testpb.SimpleRequest{ResponseSize: 1}); err != nil {
		t.Fatalf("call after GOAWAY: %v", err)
	}
	if err := ping(); err != nil {
		t.Fatalf("the stream in flight on the connection going away: %v", err)
	}
	st.CloseSend()
	if _, err := st.Recv(); err == nil {
		t.Fatal("stream did not end")
	}
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("the old server did not finish its graceful stop")
	}
}

// TestMaxStreams: MaxStreams 1 is a connection per request.
func TestMaxStreams(t *testing.T) {
	s := grpcsvc.Start(t)
	d := &dialer{}
	d.target.Store(s.Addr)
	pool := h2up.New(h2up.Config{Dial: d.dial, MaxStreams: 1})
	addr := startProxy(t, pool)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := testpb.NewTestServiceClient(conn)
	for range 3 {
		if _, err := c.UnaryCall(context.Background(), &testpb.SimpleRequest{ResponseSize: 1}); err != nil {
			t.Fatal(err)
		}
	}
	if n := d.dials.Load(); n != 3 {
		t.Fatalf("%d connections for 3 requests, want 3", n)
	}
}

// TestDialError: a failed dial is reported through DialError.
func TestDialError(t *testing.T) {
	mark := errors.New("marked")
	pool := h2up.New(h2up.Config{
		Dial:      func(context.Context) (net.Conn, error) { return nil, errors.New("refused") },
		DialError: func(err error) error { return errors.Join(mark, err) },
	})
	req, _ := http.NewRequest("GET", "http://x/", nil)
	if _, err := pool.RoundTrip(req); !errors.Is(err, mark) {
		t.Fatalf("got %v", err)
	}
}
