package httpproxy

import (
	"maps"
	"net/http"
	"net/http/httputil"
	"slices"
	"strings"
	"testing"
)

// TestScrubRequestHeader is the table of the agent's one header hygiene,
// which every HTTP path runs (hygiene.go).
func TestScrubRequestHeader(t *testing.T) {
	for _, tc := range []struct {
		name     string
		in, want http.Header
	}{
		{"ordinary headers stay",
			http.Header{"Accept": {"*/*"}, "User-Agent": {"x"}, "Content-Length": {"3"}, "X-Fogmesh-Class": {"gold"}},
			http.Header{"Accept": {"*/*"}, "User-Agent": {"x"}, "Content-Length": {"3"}, "X-Fogmesh-Class": {"gold"}}},
		{"hop-by-hop",
			http.Header{"Connection": {"keep-alive"}, "Proxy-Connection": {"x"}, "Keep-Alive": {"5"}, "Proxy-Authenticate": {"x"},
				"Proxy-Authorization": {"x"}, "Te": {"gzip"}, "Trailer": {"X"}, "Transfer-Encoding": {"chunked"}, "Upgrade": {"h2c"}, "A": {"1"}},
			http.Header{"A": {"1"}}},
		{"named in Connection",
			http.Header{"Connection": {"X-Foo, x-bar", " Baz "}, "X-Foo": {"1"}, "X-Bar": {"2"}, "Baz": {"3"}, "Qux": {"4"}},
			http.Header{"Qux": {"4"}}},
		{"te trailers kept",
			http.Header{"Te": {"gzip, trailers"}},
			http.Header{"Te": {"trailers"}}},
		{"identity and forwarding headers",
			http.Header{IdentityHeader: {"spiffe://x/y"}, "Forwarded": {"for=x"}, "X-Forwarded-For": {"6.6.6.6"},
				"X-Forwarded-Host": {"evil"}, "X-Forwarded-Proto": {"https"}, "X-Forwarded-Port": {"1"}},
			http.Header{"X-Forwarded-Port": {"1"}}},
		{"a client's certificate header and httpoxy",
			http.Header{"X-Forwarded-Client-Cert": {"By=spiffe://x/y;URI=spiffe://evil"}, "Proxy": {"http://evil:8080"},
				"X_forwarded_client_cert": {"a"}, "proxy": {"b"}, "Proxy-Id": {"c"}},
			http.Header{"Proxy-Id": {"c"}}},
		{"underscore spellings of protected names",
			http.Header{"X_fogmesh_source_id": {"a"}, "X_Fogmesh-Source_Id": {"b"}, "x_FOGMESH_source_ID": {"c"},
				"X_forwarded_for": {"d"}, "X_forwarded_host": {"e"}, "X_forwarded_proto": {"f"},
				"Transfer_encoding": {"g"}, "Content_length": {"h"}, "Host_": {"i"}, "Keep_alive": {"j"},
				"X_other": {"k"}, "X_fogmesh_class": {"l"}},
			http.Header{"Host_": {"i"}, "X_other": {"k"}, "X_fogmesh_class": {"l"}}},
		{"non-canonical keys (HTTP/2)",
			http.Header{"x-fogmesh-source-id": {"a"}, "connection": {"x"}, "x-forwarded-for": {"b"}, "accept": {"c"}},
			http.Header{"accept": {"c"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.in.Clone()
			ScrubRequestHeader(h, h["Connection"])
			if !maps.EqualFunc(h, tc.want, slices.Equal) {
				t.Errorf("got %v, want %v", h, tc.want)
			}
		})
	}
}

func TestScrubTrailer(t *testing.T) {
	in := http.Header{"X-Sum": {"1"}, "Grpc-Status": {"0"}, IdentityHeader: {"a"}, "X_fogmesh_source_id": {"b"},
		"Host": {"evil"}, "Content-Length": {"9"}, "Transfer-Encoding": {"chunked"}, "Authorization": {"x"},
		"Content-Type": {"x"}, "X-Forwarded-For": {"1.2.3.4"}, "Bad Name": {"x"}, "X-Bad-Value": {"a\r\nb"}, "Trailer": {"x"}}
	ScrubTrailer(in)
	want := http.Header{"X-Sum": {"1"}, "Grpc-Status": {"0"}}
	if !maps.EqualFunc(in, want, slices.Equal) {
		t.Errorf("got %v, want %v", in, want)
	}
	ScrubTrailer(nil) // no trailer: nothing to do
}

func TestSetXForwarded(t *testing.T) {
	h := http.Header{}
	SetXForwarded(h, []string{"127.0.0.9"}, "svc:80")
	want := http.Header{"X-Forwarded-For": {"127.0.0.9"}, "X-Forwarded-Host": {"svc:80"}, "X-Forwarded-Proto": {"http"}}
	if !maps.EqualFunc(h, want, slices.Equal) {
		t.Errorf("got %v, want %v", h, want)
	}
	if got := RemoteIP("[::1]:5"); len(got) != 1 || got[0] != "::1" {
		t.Errorf("RemoteIP: %v", got)
	}
	if got := RemoteIP("pipe"); got != nil {
		t.Errorf("RemoteIP of an address without a port: %v", got)
	}
}

func TestEqualFoldDash(t *testing.T) {
	for _, tc := range []struct {
		name, canon string
		want        bool
	}{
		{"X-Fogmesh-Source-Id", IdentityHeader, true},
		{"x_fogmesh_source_id", IdentityHeader, true},
		{"X-Fogmesh-Source-Ie", IdentityHeader, false},
		{"X-Fogmesh-Source-I", IdentityHeader, false},
		{"X\rFogmesh\rSource\rId", IdentityHeader, false}, // '\r'|0x20 == '-'
		{"X@Fogmesh-Source-Id", IdentityHeader, false},
		{"Host", "Host", true},
	} {
		if got := EqualFoldDash(tc.name, tc.canon); got != tc.want {
			t.Errorf("EqualFoldDash(%q, %q) = %v", tc.name, tc.canon, got)
		}
	}
}

// TestScrubRequestHeaderAllocs: the fast path runs the hygiene on every
// request; it must not allocate.
func TestScrubRequestHeaderAllocs(t *testing.T) {
	h := http.Header{"Accept": {"*/*"}, "User-Agent": {"x"}, "X_other": {"k"}, "Te": {"trailers"}}
	if n := testing.AllocsPerRun(100, func() { ScrubRequestHeader(h, h["Connection"]) }); n != 0 {
		t.Errorf("%v allocations per request", n)
	}
}

// TestDropForwardedHeaders: the destination side of a raw relayed
// request drops every forwarding header a client wrote, in any spelling.
func TestDropForwardedHeaders(t *testing.T) {
	h := http.Header{"Forwarded": {"for=x"}, "X-Forwarded-For": {"1"}, "x_forwarded_host": {"2"}, "X-FORWARDED-PORT": {"3"},
		"X-Forwarded-": {"4"}, "X-Forwardedfor": {"5"}, IdentityHeader: {"6"}, "Accept": {"7"}}
	DropForwardedHeaders(h)
	want := http.Header{"X-Forwarded-": {"4"}, "X-Forwardedfor": {"5"}, IdentityHeader: {"6"}, "Accept": {"7"}}
	if !maps.EqualFunc(h, want, slices.Equal) {
		t.Errorf("got %v, want %v", h, want)
	}
}

func TestDropIdentityHeaders(t *testing.T) {
	h := http.Header{IdentityHeader: {"a"}, "x_fogmesh_source_id": {"b"}, "x-fogmesh-source-id": {"c"}, "X-Fogmesh-Source": {"d"}}
	DropIdentityHeaders(h)
	if want := (http.Header{"X-Fogmesh-Source": {"d"}}); !maps.EqualFunc(h, want, slices.Equal) {
		t.Errorf("got %v, want %v", h, want)
	}
}

func TestRemoveHopByHop(t *testing.T) {
	h := http.Header{"Connection": {"X-A, x-b"}, "X-A": {"1"}, "X-B": {"2"}, "Keep-Alive": {"t"}, "Transfer-Encoding": {"chunked"},
		"Trailer": {"X"}, "Upgrade": {"h2c"}, "Content-Length": {"3"}, "X-C": {"4"}}
	RemoveHopByHop(h)
	if want := (http.Header{"Content-Length": {"3"}, "X-C": {"4"}}); !maps.EqualFunc(h, want, slices.Equal) {
		t.Errorf("got %v, want %v", h, want)
	}
}

// TestScrubProxyRequest: the ReverseProxy paths keep an upgrade that
// ReverseProxy handles (WebSocket) but never pass on one to another HTTP
// version (h2c), which would tunnel requests past the proxy.
func TestScrubProxyRequest(t *testing.T) {
	for _, tc := range []struct {
		upgrade string
		keep    bool
	}{{"websocket", true}, {"h2c", false}, {"HTTP/2.0", false}, {"foo, h2", false}} {
		in, _ := http.NewRequest("GET", "http://svc/", nil)
		in.Header = http.Header{"Connection": {"Upgrade, HTTP2-Settings"}, "Upgrade": {tc.upgrade}, "Http2-Settings": {"AAA"},
			IdentityHeader: {"forged"}, "Accept": {"*/*"}}
		out := in.Clone(in.Context())
		out.Trailer = http.Header{"Host": {"evil"}, "X-Sum": {"1"}}
		ScrubProxyRequest(&httputil.ProxyRequest{In: in, Out: out})
		want := http.Header{"Accept": {"*/*"}}
		if tc.keep {
			want["Connection"], want["Upgrade"] = []string{"Upgrade"}, []string{tc.upgrade}
		}
		if !maps.EqualFunc(out.Header, want, slices.Equal) {
			t.Errorf("Upgrade: %s: got %v, want %v", tc.upgrade, out.Header, want)
		}
		if !maps.EqualFunc(out.Trailer, http.Header{"X-Sum": {"1"}}, slices.Equal) {
			t.Errorf("trailer %v", out.Trailer)
		}
	}
}

// TestIsHopAsEqualFold: isHop names what strings.EqualFold against each
// hop-by-hop header names, the Unicode folds included (U+212A KELVIN SIGN
// is 'k' to EqualFold, U+017F LONG S is 's': names longer in bytes than
// the header they match).
func TestIsHopAsEqualFold(t *testing.T) {
	names := []string{"Connection", "connection", "KEEP-ALIVE", "\u212aeep-Alive", "Tran\u017ffer-Encoding", "Te", "tE", "T", "Tee",
		"Upgrade", "Upgrades", "Host", "Accept", "X-Forwarded-For", "Proxy-Authorization", "Proxy-Authorizatio", "", "\xff", "Trailer"}
	for _, h := range hopHeaders {
		names = append(names, h, strings.ToLower(h), strings.ToUpper(h), h+"x", h[1:])
	}
	for _, name := range names {
		want := false
		for _, h := range hopHeaders {
			want = want || strings.EqualFold(name, h)
		}
		if got := isHop(name); got != want {
			t.Errorf("isHop(%q) = %v; EqualFold says %v", name, got, want)
		}
	}
}

// FuzzIsHop holds isHop to strings.EqualFold against every hop-by-hop
// header name, the scan before names were compared by length.
func FuzzIsHop(f *testing.F) {
	for _, s := range []string{"Connection", "\u212aeep-Alive", "Tran\u017ffer-Encoding", "te", "\xff", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		want := false
		for _, h := range hopHeaders {
			want = want || strings.EqualFold(name, h)
		}
		if got := isHop(name); got != want {
			t.Fatalf("isHop(%q) = %v; EqualFold says %v", name, got, want)
		}
	})
}
