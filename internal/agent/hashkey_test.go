package agent

import (
	"net/http/httptest"
	"testing"

	"github.com/fogmesh/fogmesh/internal/api"
)

// A consistent hash on the header host (or :authority) hashes the request's
// authority, as Envoy's: Go keeps Host out of the header map, so reading
// the map found nothing and every request fell to the next key.
func TestHashKeyOnHostHeader(t *testing.T) {
	for _, name := range []string{"host", "Host", ":authority"} {
		req := httptest.NewRequest("GET", "http://shop-7.example/", nil)
		req.RemoteAddr = "127.0.0.9:5555"
		if got := hashKeyOf(req, &api.HashKey{Header: name, SourceIP: true}); got != "shop-7.example" {
			t.Errorf("hash key on header %q: %q, want the authority shop-7.example", name, got)
		}
	}
	req := httptest.NewRequest("GET", "http://shop-7.example/", nil)
	req.Header.Set("X-User", "u1")
	if got := hashKeyOf(req, &api.HashKey{Header: "x-user"}); got != "u1" {
		t.Errorf("hash key on x-user: %q", got)
	}
}
