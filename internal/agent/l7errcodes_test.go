package agent

import (
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"testing"

	"github.com/fogmesh/fogmesh/internal/h2up"
	"golang.org/x/net/http2"
)

// A gRPC call the endpoint reset with CANCEL at its grpc-timeout is
// DEADLINE_EXCEEDED to the caller, on every path that answers it (the
// forwarder's errorHandler and the authorization server's); without a
// grpc-timeout, or with another reset code, it is UNAVAILABLE.
func TestGRPCErrorCodes(t *testing.T) {
	cancel := fmt.Errorf("all endpoints failed: %w", &h2up.StreamError{ID: 13, Code: http2.ErrCodeCancel})
	refused := fmt.Errorf("all endpoints failed: %w", &h2up.StreamError{ID: 13, Code: http2.ErrCodeRefusedStream})
	for _, tc := range []struct {
		name    string
		timeout string
		err     error
		want    string
	}{
		{"cancel at the deadline", "300m", cancel, "4"},
		{"cancel without a deadline", "", cancel, "14"},
		{"refused with a deadline", "300m", refused, "14"},
		{"no route", "300m", errNoRoute, "12"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("POST", "http://svc/pkg.Svc/Call", nil)
			r.Header.Set("Content-Type", "application/grpc")
			if tc.timeout != "" {
				r.Header.Set("Grpc-Timeout", tc.timeout)
			}
			if _, got := errorCodes(r, tc.err); got != tc.want {
				t.Errorf("errorCodes: grpc-status %s, want %s", got, tc.want)
			}
			w := httptest.NewRecorder()
			s := &l7{a: &Agent{log: slog.New(slog.NewTextHandler(io.Discard, nil))}}
			s.errorHandler(w, r, tc.err)
			if got := w.Header().Get("Grpc-Status"); got != tc.want {
				t.Errorf("errorHandler: grpc-status %q, want %s", got, tc.want)
			}
		})
	}
}
