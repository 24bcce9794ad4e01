package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestRelay: h2c requests with bodies from several goroutines over one
// client connection come back with their own bodies and trailers; with
// about 5 MiB each way the connection's windows must be credited back.
// What is in flight stays under the backend's windows (1 MiB), which
// h2bare does not watch (see the package comment).
func TestRelay(t *testing.T) {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	bln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	backend := &http.Server{Protocols: &p, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Trailer", "X-Echo-Len")
		fmt.Fprintf(w, "%s %s %s", r.Proto, r.URL.Path, b)
		w.Header().Set("X-Echo-Len", fmt.Sprint(len(b)))
	})}
	go backend.Serve(bln)
	defer backend.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go proxy(ln, bln.Addr().String())
	tr := &http.Transport{Protocols: &p}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second} // a stalled window fails, not hangs
	errs := make(chan error, 4)
	for g := range 4 {
		go func() {
			for i := range 50 {
				path, body := fmt.Sprintf("/g%d/r%d", g, i), strings.Repeat("x", i*1000)
				resp, err := client.Post("http://"+ln.Addr().String()+path, "text/plain", strings.NewReader(body))
				if err != nil {
					errs <- err
					return
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if want := "HTTP/2.0 " + path + " " + body; err != nil || string(b) != want || resp.Trailer.Get("X-Echo-Len") != fmt.Sprint(len(body)) {
					errs <- fmt.Errorf("%s: %q %v trailer %q", path, b, err, resp.Trailer)
					return
				}
			}
			errs <- nil
		}()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}
