//go:build fogmesh_pprof

package cli

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestServePprof (go test -tags fogmesh_pprof): the profiling build serves
// the profiles on a loopback address and refuses any other.
func TestServePprof(t *testing.T) {
	addr, err := servePprof("127.178.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + addr.String() + "/debug/pprof/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "goroutine") {
		t.Fatalf("GET /debug/pprof/: %d %.200q", resp.StatusCode, body)
	}
	for _, bad := range []string{"0.0.0.0:0", "10.0.0.1:0", "localhost:0", ""} {
		if _, err := servePprof(bad); err == nil {
			t.Errorf("servePprof(%q): no error, want a refusal", bad)
		}
	}
}
