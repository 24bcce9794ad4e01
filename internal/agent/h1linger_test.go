package agent

import (
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// Bugs a review of session 19's own changes found: each test fails
// without its fix.

// TestH1EarlyRejectionConnClose: TestH1EarlyRejection with a client
// that sends "Connection: close" (keep is false before drain, so the
// lingering close is never armed and the connection is closed with the
// body unread: a reset).
func TestH1EarlyRejectionConnClose(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/upload" {
			http.Error(w, "too big", http.StatusRequestEntityTooLarge) // body unread
			return
		}
		io.WriteString(w, "ok")
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	port := ln.Addr().(*net.TCPAddr).Port

	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, httpSvcDoc("earlyc", 19771, "http"))
	startAgent(t, agentOpts{name: "e", site: "s1", region: "r1", vipOctet: 209, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir(), workloads: []Workload{webWorkload("earlyc", "earlyc-1", port)}})
	base := "http://127.209.0.1:19771"
	c := &http.Client{Timeout: 10 * time.Second}
	waitGet200(t, c, base+"/")

	fails := 0
	for i := 0; i < 5; i++ {
		req, _ := http.NewRequest("POST", base+"/upload", io.LimitReader(endlessZeros{}, 8<<20))
		req.ContentLength = 8 << 20
		req.Close = true
		resp, err := c.Do(req)
		if err != nil {
			t.Logf("attempt %d: through the agent: %v", i, err)
			fails++
			continue
		}
		io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 413 {
			t.Logf("attempt %d: %d", i, resp.StatusCode)
			fails++
		}
	}
	if fails > 0 {
		t.Fatalf("%d of 5 uploads with Connection: close lost the endpoint's 413", fails)
	}
}
