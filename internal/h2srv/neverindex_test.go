package h2srv

import (
	"bytes"
	"net/http"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/fogmesh/fogmesh/internal/testenv"
)

// TestSetCookieNeverIndexed: a response's Set-Cookie (and the credential
// fields h2up never indexes) goes as a
// never-indexed literal (RFC 7541 §7.1.3), on every response: a
// connection's HPACK table may be shared by many clients' streams (the
// authz server's mesh streams), and an indexed session cookie could be
// guessed by another client from the sizes of its own responses. They
// used to be indexed like any field, and sent by reference from the
// second response on.
func TestSetCookieNeverIndexed(t *testing.T) {
	addr := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Add("Set-Cookie", "sid=0123456789abcdef0123456789abcdef; Path=/; HttpOnly")
		w.Header().Add("Set-Cookie", "pref=dark")
		w.Header().Set("Proxy-Authorization", "Basic dXNlcjpwYXNz")
		w.Header().Set("X-Plain", "some-value-worth-indexing")
		w.Header().Set("Authorization", "Bearer not-a-response-field-but-kept-secret")
		w.Write([]byte("ok"))
	})})
	c := rawConn(t, addr, nil)
	fr := http2.NewFramer(c, c)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	enc := hpack.NewEncoder(&b)
	for _, kv := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "x"}, {":path", "/"}} {
		enc.WriteField(hpack.HeaderField{Name: kv[0], Value: kv[1]})
	}
	dec := testenv.NewStrictHPACK()
	credentials := map[string]bool{"set-cookie": true, "proxy-authorization": true, "authorization": true}
	for _, id := range []uint32{1, 3} { // the second response could refer to the first's entries
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: b.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
		seen := map[string]int{}
		for blocks := 0; blocks < 1; {
			f, err := fr.ReadFrame()
			if err != nil {
				t.Fatalf("stream %d: %v", id, err)
			}
			if s, ok := f.(*http2.SettingsFrame); ok && !s.IsAck() {
				fr.WriteSettingsAck()
			}
			h, ok := f.(*http2.HeadersFrame)
			if !ok || h.StreamID != id {
				continue
			}
			if !h.HeadersEnded() {
				t.Fatalf("stream %d: a block in CONTINUATION frames", id)
			}
			blocks++
			fields, err := dec.Decode(h.HeaderBlockFragment())
			if err != nil {
				t.Fatalf("stream %d: %v", id, err)
			}
			for _, f := range fields {
				seen[f.Name]++
				if f.Sensitive != credentials[f.Name] {
					t.Errorf("stream %d: %s: %q never indexed %v; want %v", id, f.Name, f.Value, f.Sensitive, credentials[f.Name])
				}
			}
		}
		if seen["set-cookie"] != 2 || seen["proxy-authorization"] != 1 || seen["authorization"] != 1 || seen["x-plain"] != 1 {
			t.Fatalf("stream %d: fields seen %v", id, seen)
		}
	}
}
