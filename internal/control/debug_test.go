package control

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/store"
	"github.com/fogmesh/fogmesh/internal/syncproto"
	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// adminHTTP is an HTTPS client of s's admin API trusting its CA.
func adminHTTP(t *testing.T, s *Server) *http.Client {
	t.Helper()
	pem, err := os.ReadFile(filepath.Join(s.cfg.StateDir, BundleFile))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("no CA in " + BundleFile)
	}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

func adminGet(t *testing.T, c *http.Client, s *Server, path, token string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "https://"+s.AdminAddr()+path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// The profiles are on the admin port behind the admin authentication: no
// credentials get 401, a read-only token 403, the admin token profiles.
func TestPprofNeedsTheAdminRole(t *testing.T) {
	s := startSecure(t)
	c := adminHTTP(t, s)
	tok, err := os.ReadFile(filepath.Join(s.cfg.StateDir, AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	admin := strings.TrimSpace(string(tok))

	// A read-only token, made through the API.
	req, _ := http.NewRequest(http.MethodPost, "https://"+s.AdminAddr()+"/v1/tokens", strings.NewReader(`{"kind":"admin","role":"read-only"}`))
	req.Header.Set("Authorization", "Bearer "+admin)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var tr TokenResponse
	err = json.NewDecoder(resp.Body).Decode(&tr)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || tr.Token == "" {
		t.Fatalf("read-only token: %d %v", resp.StatusCode, err)
	}

	for _, p := range []string{"/debug/pprof/", "/debug/pprof/heap", "/debug/pprof/goroutine?debug=1", "/debug/pprof/cmdline",
		"/debug/pprof/trace?seconds=1", "/debug/pprof/profile?seconds=1", "/debug/pprof/mutex", "/debug/pprof/block"} {
		if code, b := adminGet(t, c, s, p, ""); code != http.StatusUnauthorized {
			t.Fatalf("%s without credentials: %d %s", p, code, b)
		}
		if code, b := adminGet(t, c, s, p, "not.a.token"); code != http.StatusUnauthorized {
			t.Fatalf("%s with a bad token: %d %s", p, code, b)
		}
		if code, b := adminGet(t, c, s, p, tr.Token); code != http.StatusForbidden {
			t.Fatalf("%s with a read-only token: %d %s", p, code, b)
		}
	}

	code, b := adminGet(t, c, s, "/debug/pprof/", admin)
	if code != http.StatusOK || !bytes.Contains(b, []byte("goroutine")) {
		t.Fatalf("index: %d %.200s", code, b)
	}
	code, b = adminGet(t, c, s, "/debug/pprof/goroutine?debug=1", admin)
	if code != http.StatusOK || !bytes.Contains(b, []byte("internal/control.(*Server).Serve")) {
		t.Fatalf("goroutine dump: %d %.300s", code, b)
	}
	code, b = adminGet(t, c, s, "/debug/pprof/heap", admin)
	if code != http.StatusOK || len(b) < 2 || b[0] != 0x1f || b[1] != 0x8b { // a gzipped profile.proto
		t.Fatalf("heap profile: %d %q", code, b[:min(len(b), 40)])
	}
	code, b = adminGet(t, c, s, "/debug/pprof/trace?seconds=1", admin)
	if code != http.StatusOK || !bytes.HasPrefix(b, []byte("go 1.")) {
		t.Fatalf("trace: %d %q", code, b[:min(len(b), 40)])
	}
}

// metricValue reads one sample of s's metrics, 0 if absent (an empty
// histogram writes no lines).
func metricValue(t *testing.T, s *Server, name string) float64 {
	t.Helper()
	var buf bytes.Buffer
	s.cfg.Metrics.WritePrometheus(&buf)
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindSubmatch(buf.Bytes())
	if m == nil {
		return 0
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// An admin write is timed by phase, in the control plane's metrics.
func TestAdminWritePhasesAreTimed(t *testing.T) {
	s := startServer(t, t.TempDir())
	for i := range 3 {
		if code, b := applyDoc(t, s, helloSvc); code != http.StatusOK {
			t.Fatalf("apply %d: %d %s", i, code, b)
		}
	}
	for _, p := range adminPhaseNames {
		name := `fogmesh_control_admin_write_seconds_count{phase="` + p + `"}`
		if v := metricValue(t, s, name); v != 3 {
			t.Fatalf("%s = %v after 3 applies", name, v)
		}
	}
	if v := metricValue(t, s, `fogmesh_control_admin_write_seconds_sum{phase="total"}`); v <= 0 {
		t.Fatalf("total time %v", v)
	}
}

// The push time of a commit is recorded once, when the last stream it
// woke has written it: not before, and not once per stream.
func TestPushTimeWaitsForEveryStreamWoken(t *testing.T) {
	s := startQuietServer(t)
	fd := feedOf(t, s)
	const count = "fogmesh_control_push_seconds_count"
	base := metricValue(t, s, count)
	// Three subscribers without a sender: the test says when each has
	// written.
	a, b, c := fd.subscribe(syncproto.Filter{}), fd.subscribe(syncproto.Filter{}), fd.subscribe(syncproto.Filter{})
	defer fd.unsubscribe(a)
	defer fd.unsubscribe(b)
	rev := applyObjs(t, s, svcObj("demo", "a"))
	testenv.WaitFor(t, 10*time.Second, "the feed at the commit", func() bool { cur, _ := fd.watch(); return cur >= rev })
	if v := metricValue(t, s, count); v != base {
		t.Fatalf("push counted (%v) before any stream wrote", v-base)
	}
	fd.served(a, rev)
	fd.served(a, rev) // twice: still one stream
	if v := metricValue(t, s, count); v != base {
		t.Fatalf("push counted (%v) with two of three streams behind", v-base)
	}
	fd.unsubscribe(c) // an ended stream holds up nothing
	fd.served(b, rev-1)
	if v := metricValue(t, s, count); v != base {
		t.Fatalf("push counted (%v) with a stream behind the commit", v-base)
	}
	fd.served(b, rev)
	if v := metricValue(t, s, count); v != base+1 {
		t.Fatalf("push counted %v times for one commit, want 1", v-base)
	}

	// End to end: real streams write a commit, and it is counted.
	var agents []*agentConn
	for i := range 3 {
		ag := dialAgent(t, s, fmt.Sprintf("push%d", i))
		ag.send(&wire.Message{Type: wire.TypeSubscribe})
		agents = append(agents, ag)
	}
	cur, _ := s.st.Rev()
	for _, ag := range agents {
		ag.recvUntil(cur)
	}
	fd.unsubscribe(a)
	fd.unsubscribe(b)
	before := metricValue(t, s, count)
	rev = applyObjs(t, s, epObj("demo", "e1", "a", "", 9001))
	for _, ag := range agents {
		ag.recvUntil(rev)
	}
	testenv.WaitFor(t, 10*time.Second, "the push of the endpoint counted", func() bool { return metricValue(t, s, count) >= before+1 })
	if v := metricValue(t, s, "fogmesh_control_push_seconds_sum"); v <= 0 {
		t.Fatalf("push time sum %v", v)
	}
}

// The control plane's audit head, stored after each admin change's
// records, rides along with the next change's commit: admin changes one
// after the other cost about one write transaction each, not two (each
// is two fdatasyncs under bbolt's one writer).
func TestOwnAuditHeadRidesAlongWithTheNextCommit(t *testing.T) {
	s := startQuietServer(t)
	bst, ok := s.st.(*store.Store)
	if !ok {
		t.Fatal("not the embedded store")
	}
	if code, b := applyDoc(t, s, helloSvc); code != http.StatusOK {
		t.Fatalf("apply: %d %s", code, b)
	}
	const n = 20
	before := bst.Commits()
	for i := range n {
		doc := fmt.Sprintf("apiVersion: fogmesh.io/v1alpha1\nkind: Endpoint\nmetadata: {name: e, namespace: demo}\nspec: {service: hello, address: 127.145.0.1, ports: [{name: http, port: %d}]}\n", 9000+i)
		if code, b := applyDoc(t, s, doc); code != http.StatusOK {
			t.Fatalf("apply %d: %d %s", i, code, b)
		}
	}
	// The head still follows the chain (within ownHeadWait).
	testenv.WaitFor(t, 10*time.Second, "the audit head at the chain's last record", func() bool {
		seq, hash := s.audit.log.Last()
		h, err := s.storedHead(s.ownHeadKey())
		return err == nil && h != nil && h.Seq == seq && h.Hash == hash
	})
	// n changes, and at most a few heads alone (one at the end, and one
	// whose change came later than ownHeadWait on a busy machine).
	if c := bst.Commits() - before; c > n+3 {
		t.Fatalf("%d write transactions for %d admin changes, want about one each (the head with the next change)", c, n)
	}
}
