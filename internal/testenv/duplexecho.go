package testenv

import (
	"fmt"
	"io"
	"net/http"
)

// DuplexEcho is an endpoint for full-duplex tests: a request other than a
// POST gets "ok <path>"; a POST's first 5 body bytes come back at once
// (flushed, full duplex) and, on /early, are the whole answer (the rest of
// the body left unread); elsewhere the answer ends with "|n=<bytes> err=<the
// body's read error>" once the body has ended.
func DuplexEcho(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		io.WriteString(w, "ok "+r.URL.Path)
		return
	}
	rc := http.NewResponseController(w)
	rc.EnableFullDuplex()
	first := make([]byte, 5)
	if _, err := io.ReadFull(r.Body, first); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if r.URL.Path == "/early" {
		w.Header().Set("Content-Length", "5")
		w.Write(first)
		return
	}
	w.Write(first)
	rc.Flush()
	m, err := io.Copy(io.Discard, r.Body)
	fmt.Fprintf(w, "|n=%d err=%v", 5+m, err)
}
