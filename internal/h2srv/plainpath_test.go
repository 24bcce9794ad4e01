package h2srv

import (
	"math/rand/v2"
	"net/url"
	"reflect"
	"testing"
)

// TestPlainPath: a path plainPath takes is what url.ParseRequestURI makes
// of it, a URL with that Path and nothing else; paths with anything more
// are left to it.
func TestPlainPath(t *testing.T) {
	paths := []string{"/", "/fgrpc.PingServer/Ping", "/a/b-c_d.e~f/", "/x/../y", "/./", "/%41", "/a?b", "/a#b",
		"//host/p", "/a b", "/a;b", "/a:b", "/a@b", "/é", "*", "a", ""}
	const alphabet = "/abzAZ09-._~%?#;:@ +!$&'()*,=\x7f"
	r := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		b := []byte{'/'}
		for range r.IntN(12) {
			b = append(b, alphabet[r.IntN(len(alphabet))])
		}
		paths = append(paths, string(b))
	}
	for _, p := range paths {
		if !plainPath(p) {
			continue
		}
		u, err := url.ParseRequestURI(p)
		if err != nil {
			t.Fatalf("%q: plain, but ParseRequestURI fails: %v", p, err)
		}
		if want := (url.URL{Path: p}); !reflect.DeepEqual(*u, want) {
			t.Fatalf("%q: ParseRequestURI gives %#v, plainPath's URL %#v", p, *u, want)
		}
	}
	for _, p := range []string{"/", "/fgrpc.PingServer/Ping", "/a/b-c_d.e~f/"} {
		if !plainPath(p) {
			t.Errorf("%q is plain", p)
		}
	}
}
