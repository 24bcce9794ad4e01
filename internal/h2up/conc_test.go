package h2up_test

import (
	"context"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/fogmesh/fogmesh/internal/h2up"
	"github.com/fogmesh/fogmesh/internal/testenv/grpcsvc"
)

// TestConcurrentUnary: many clients' unary calls at once over one pooled
// upstream connection all succeed.
func TestConcurrentUnary(t *testing.T) {
	s := grpcsvc.Start(t)
	d := &dialer{}
	d.target.Store(s.Addr)
	addr := startProxy(t, h2up.New(h2up.Config{Dial: d.dial}))
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close()
			c := testpb.NewTestServiceClient(conn)
			for range 100 {
				if _, err := c.UnaryCall(context.Background(), &testpb.SimpleRequest{ResponseSize: 10, Payload: &testpb.Payload{Body: []byte("0123456789")}}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
