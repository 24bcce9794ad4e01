package h2srv

import (
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// TestNoContinueAfterResponse: a request body's first read (a proxy's
// request body writer, on a goroutine of its own) after the response's
// header went out (an endpoint that answered before it took the body: a
// detached stream finished from its read loop; or a handler that flushed
// its header) sends no 100 Continue: it came after the final response
// (on a stream the client saw end, for the detached one: a protocol
// error, RFC 9113 §5.1).
func TestNoContinueAfterResponse(t *testing.T) {
	for _, detach := range []bool{true, false} {
		done := make(chan struct{})
		addr := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			defer close(done)
			if detach {
				a := Detach(w)
				a.ResponseWriter().WriteHeader(http.StatusUnauthorized)
				a.Finish()
			} else {
				w.WriteHeader(http.StatusUnauthorized)
				w.(http.Flusher).Flush()
			}
			r.Body.Read(make([]byte, 8)) // the body's first read, after the answer
		})})
		rc := newRawClient(t, addr)
		rc.headers(1, false, ":method", "POST", "expect", "100-continue", "content-length", "5")
		var got []string
		ping := false
		for !ping {
			switch f := rc.next().(type) {
			case *http2.MetaHeadersFrame:
				if f.StreamID != 1 {
					continue
				}
				got = append(got, f.PseudoValue("status"))
				if f.PseudoValue("status") == "401" {
					// The body, so that the handler's read returns.
					rc.fr.WriteData(1, true, []byte("hello"))
					select {
					case <-done:
					case <-time.After(10 * time.Second):
						t.Fatal("the handler did not return")
					}
					rc.fr.WritePing(false, [8]byte{1}) // its ACK follows what the handler wrote
				}
			case *http2.PingFrame:
				ping = f.IsAck()
			}
		}
		if len(got) != 1 || got[0] != "401" {
			t.Errorf("detach %v: header blocks on the stream %q, want the 401 alone", detach, got)
		}
		rc.c.Close()
	}
}
