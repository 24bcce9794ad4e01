package agent

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"log"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// lockedBuf is a bytes.Buffer for a log handler written from several
// goroutines.
type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// records are the JSON log records written so far.
func (l *lockedBuf) records(t *testing.T) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.b.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

// TestServerErrorLogPanics: net/http's "http: panic serving" lines (a
// panic it recovered on a connection's goroutine, here a handler without
// recoverHandler's, as the admin API's) reach the agent's log at error
// level with the stack and are counted; its other lines (a TLS handshake
// error) stay at debug level, uncounted. The agent's servers use it.
func TestServerErrorLogPanics(t *testing.T) {
	var buf lockedBuf
	a := &Agent{log: slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	a.m.panics = metrics.NewSet().NewCounter("fogmesh_agent_panics_total")
	srv := &http.Server{ErrorLog: a.serverErrorLog(), Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		panic("test: a bug net/http recovers")
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	if resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + ln.Addr().String() + "/"); err == nil {
		resp.Body.Close()
		t.Fatal("an answer from the handler that panicked")
	}
	waitFor(t, "the panic counted", func() bool { return a.m.panics.Get() == 1 })
	var got map[string]any
	for _, r := range buf.records(t) {
		if r["msg"] == "agent: panic in net/http's server" {
			got = r
		}
	}
	if got == nil || got["level"] != "ERROR" || !strings.Contains(got["panic"].(string), "test: a bug net/http recovers") ||
		!strings.Contains(got["stack"].(string), "goroutine") {
		t.Fatalf("the panic's record %v; want error level, the panic and its stack; all: %v", got, buf.records(t))
	}

	// net/http's HTTP/2 server's form of the line (a handler's panic on
	// an h2c or h2 connection it serves).
	log.New(serverLogWriter{a}, "", 0).Printf("http2: panic serving 127.0.0.1:1: %v\n%s", "test: an h2 bug", "goroutine 1 [running]:")
	if n := a.m.panics.Get(); n != 2 {
		t.Fatalf("%d panics counted after the http2 line, want 2", n)
	}

	// A TLS server's handshake error: debug, not counted.
	tln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tsrv := &http.Server{ErrorLog: a.serverErrorLog(), Handler: http.NotFoundHandler(),
		TLSConfig: &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return nil, nil }}}
	go tsrv.ServeTLS(tln, "", "")
	defer tsrv.Close()
	c, err := net.Dial("tcp", tln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")) // not a TLS record
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	c.Read(make([]byte, 512))
	c.Close()
	var hs map[string]any
	waitFor(t, "the handshake error's line", func() bool {
		for _, r := range buf.records(t) {
			if m, _ := r["msg"].(string); strings.Contains(m, "TLS handshake error") {
				hs = r
				return true
			}
		}
		return false
	})
	if hs["level"] != "DEBUG" {
		t.Errorf("handshake error logged %v, want debug level", hs)
	}
	if n := a.m.panics.Get(); n != 2 {
		t.Errorf("%d panics counted, want 2", n)
	}
}

// TestServersUseServerErrorLog: the agent's net/http servers (the L7
// ports', the endpoint agent's, the admin API's) log through
// serverErrorLog, and its h2srv servers report read-loop panics.
func TestServersUseServerErrorLog(t *testing.T) {
	a, _, _ := goPanicAgent(t)
	for name, l := range map[string]*log.Logger{"l7": a.l7.srv.ErrorLog, "authz": a.authzHTTP.srv.ErrorLog, "admin": a.admin.ErrorLog} {
		if _, ok := l.Writer().(serverLogWriter); !ok {
			t.Errorf("the %s server's ErrorLog writes to %T, want serverLogWriter", name, l.Writer())
		}
	}
	// h2srv's read-loop panics go to the agent's log and count too.
	if a.l7.h2.OnPanic == nil || a.authzHTTP.h2.OnPanic == nil {
		t.Error("an h2srv server without OnPanic")
	}
}
