package httpproxy

import (
	"bufio"
	"bytes"
	"context"
	"maps"
	"net/textproto"
	"slices"
	"strings"
	"testing"
)

// leanCleanSeeds: heads with and without fields ScrubRequestHeader deletes,
// in several spellings.
var leanCleanSeeds = []struct {
	head  string
	clean bool
}{
	{"GET / HTTP/1.1\r\nHost: a\r\n\r\n", true},
	{"GET /x?y HTTP/1.1\r\nHost: a\r\nUser-Agent: u\r\nAccept-Encoding: gzip\r\n\r\n", true},
	{"GET / HTTP/1.1\r\nhost: a\r\naccept: */*\r\nx-id: 1\r\nx-id: 2\r\n\r\n", true},
	{"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n", false},
	{"GET / HTTP/1.1\r\nHost: a\r\nconnection: close\r\n\r\n", false},
	{"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-drop\r\nX-Drop: 1\r\n\r\n", false},
	{"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n", false},
	{"GET / HTTP/1.1\r\nHost: a\r\nkeep-alive: 5\r\n\r\n", false},
	{"GET / HTTP/1.1\r\nHost: a\r\nPROXY-CONNECTION: keep-alive\r\n\r\n", false}, // (an Upgrade field is not lean: Eligible hands it off)
	{"GET / HTTP/1.1\r\nHost: a\r\nProxy-Authorization: x\r\n\r\n", false},
	{"GET / HTTP/1.1\r\nHost: a\r\nProxy-Connection: x\r\n\r\n", false},
	{"GET / HTTP/1.1\r\nHost: a\r\nx-forwarded-for: 1.2.3.4\r\n\r\n", false},
	{"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Host: h\r\n\r\n", false},
	{"GET / HTTP/1.1\r\nHost: a\r\nForwarded: for=x\r\n\r\n", false},
	{"GET / HTTP/1.1\r\nHost: a\r\nX-Fogmesh-Source-Id: spiffe://x\r\n\r\n", false},
	{"GET / HTTP/1.1\r\nHost: a\r\nX_Fogmesh_Source_Id: spiffe://x\r\n\r\n", false},
	{"GET / HTTP/1.1\r\nHost: a\r\nx_forwarded_for: 1.2.3.4\r\n\r\n", false},
	{"GET / HTTP/1.1\r\nHost: a\r\nProxy_Authorization: x\r\n\r\n", false},
	{"GET / HTTP/1.1\r\nHost: a\r\nX_Other: 1\r\n\r\n", true}, // '_' but no protected name: kept
}

// TestLeanHeaderClean: HeaderBuf.HeaderClean is true only for a lean head
// with no field ScrubRequestHeader deletes, and then ScrubRequestHeader
// changes nothing; false after Recycle and Done.
func TestLeanHeaderClean(t *testing.T) {
	for _, c := range leanCleanSeeds {
		for _, recycled := range []bool{false, true} {
			clean, took := checkHeaderClean(t, []byte(c.head), recycled)
			if !took {
				t.Fatalf("%q: declined", c.head)
			}
			if clean != c.clean {
				t.Errorf("%q (after a recycled request %t): HeaderClean %t, want %t", c.head, recycled, clean, c.clean)
			}
		}
	}
	var hb HeaderBuf
	br := bufio.NewReader(strings.NewReader(leanCleanSeeds[0].head))
	br.Peek(1)
	if LeanRequest(context.Background(), br, &hb) == nil || !hb.HeaderClean() {
		t.Fatal("a clean head not clean")
	}
	hb.Recycle()
	if hb.HeaderClean() {
		t.Error("HeaderClean after Recycle")
	}
	br = bufio.NewReader(strings.NewReader(leanCleanSeeds[0].head))
	br.Peek(1)
	LeanRequest(context.Background(), br, &hb)
	hb.Done()
	if hb.HeaderClean() {
		t.Error("HeaderClean after Done")
	}
	// A head declined after its leanReq was taken is not clean.
	br = bufio.NewReader(strings.NewReader("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"))
	br.Peek(1)
	if LeanRequest(context.Background(), br, &hb) != nil || hb.HeaderClean() {
		t.Error("a declined head: taken, or HeaderClean")
	}
}

// FuzzLeanHeaderClean: whatever LeanRequest takes and calls clean,
// ScrubRequestHeader leaves as it is.
func FuzzLeanHeaderClean(f *testing.F) {
	for _, s := range leanRequestSeeds {
		f.Add([]byte(s))
	}
	for _, c := range leanCleanSeeds {
		f.Add([]byte(c.head))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkHeaderClean(t, data, false)
		checkHeaderClean(t, data, true)
	})
}

// checkHeaderClean parses data with LeanRequest (after an earlier request,
// recycled or not) and, if HeaderClean says so, checks that
// ScrubRequestHeader changes nothing of the header.
func checkHeaderClean(t *testing.T, data []byte, recycled bool) (clean, took bool) {
	t.Helper()
	var hb HeaderBuf
	prev := bufio.NewReader(strings.NewReader("GET / HTTP/1.1\r\nHost: p\r\nConnection: x-a\r\nX-A: 1\r\n\r\n"))
	prev.Peek(1)
	if LeanRequest(context.Background(), prev, &hb) == nil || hb.HeaderClean() {
		t.Fatal("the earlier request: declined, or clean")
	}
	if recycled {
		hb.Recycle()
	}
	br := bufio.NewReaderSize(bytes.NewReader(data), BufSize)
	br.Peek(1)
	req := LeanRequest(context.Background(), br, &hb)
	if req == nil {
		if hb.HeaderClean() {
			t.Fatalf("%q: declined, yet HeaderClean", data)
		}
		return false, false
	}
	clean = hb.HeaderClean()
	scrubbed := req.Header.Clone()
	ScrubRequestHeader(scrubbed, scrubbed["Connection"])
	same := len(scrubbed) == len(req.Header)
	for k, vv := range req.Header {
		if !slices.Equal(scrubbed[k], vv) {
			same = false
		}
	}
	if clean && !same {
		t.Fatalf("%q: HeaderClean, but ScrubRequestHeader made %v of %v", data, scrubbed, req.Header)
	}
	for k := range maps.Keys(req.Header) {
		if clean && scrubsName(k) {
			t.Fatalf("%q: HeaderClean with field %q", data, k)
		}
		if scrubsCanonical(k) != scrubsName(k) {
			t.Fatalf("%q: field %q: scrubsCanonical %t, scrubsName %t", data, k, scrubsCanonical(k), scrubsName(k))
		}
	}
	return clean, true
}

// TestScrubsCanonical: scrubsCanonical agrees with scrubsName on every
// canonical name of the lists and their '_' spellings, and on others.
func TestScrubsCanonical(t *testing.T) {
	names := []string{"Host", "Content-Length", "Content-Type", "Accept", "User-Agent", "X-Id", "X_Id", "Te_", "X-Forwarded", "Forwarded-For", "Connections", "T"}
	for _, h := range protectedHeaders {
		names = append(names, h, strings.ReplaceAll(h, "-", "_"))
	}
	for _, k := range names {
		if c := textproto.CanonicalMIMEHeaderKey(k); c != k {
			continue // not a canonical name: not scrubsCanonical's
		}
		if scrubsCanonical(k) != scrubsName(k) {
			t.Errorf("%q: scrubsCanonical %t, scrubsName %t", k, scrubsCanonical(k), scrubsName(k))
		}
	}
	for _, h := range append(append([]string{}, hopHeaders...), agentHeaders...) {
		if !scrubsCanonical(h) {
			t.Errorf("%q: not scrubbed", h)
		}
	}
}

// TestLeanHeaderCleanSpellings: every name ScrubRequestHeader deletes
// (the hop-by-hop and agent headers, and the '_' aliases of those and of
// Host and Content-Length), in every '-'/'_' spelling and in lower, upper
// and mixed case, alone in a lean head (no Connection field to give it
// away), makes the head not clean; the same head with a name the scrub
// keeps is clean.
func TestLeanHeaderCleanSpellings(t *testing.T) {
	cases := func(s string) []string {
		var alt []byte
		for i := 0; i < len(s); i++ {
			c := s[i]
			if i%2 == 0 {
				c = strings.ToUpper(string(c))[0]
			} else {
				c = strings.ToLower(string(c))[0]
			}
			alt = append(alt, c)
		}
		return []string{s, strings.ToLower(s), strings.ToUpper(s), string(alt)}
	}
	parse := func(name string) (clean, took bool) {
		var hb HeaderBuf
		br := bufio.NewReader(strings.NewReader("GET / HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n" + name + ": 1\r\n\r\n"))
		br.Peek(1)
		if LeanRequest(context.Background(), br, &hb) == nil {
			return false, false
		}
		return hb.HeaderClean(), true
	}
	n := 0
	for _, h := range protectedHeaders {
		var dashes []int
		for i := 0; i < len(h); i++ {
			if h[i] == '-' {
				dashes = append(dashes, i)
			}
		}
		for mask := 0; mask < 1<<len(dashes); mask++ {
			b := []byte(h)
			for j, i := range dashes {
				if mask&(1<<j) != 0 {
					b[i] = '_'
				}
			}
			for _, name := range cases(string(b)) {
				clean, took := parse(name)
				if !took {
					continue // a framing field LeanRequest leaves to http.ReadRequest
				}
				n++
				if want := !scrubsName(name); clean != want {
					t.Errorf("%q: HeaderClean %t, want %t", name, clean, want)
				}
			}
		}
	}
	if n < 100 {
		t.Fatalf("only %d spellings parsed", n)
	}
	for _, name := range []string{"X-Other", "x_other", "X-Forwarded-Port", "Hosts", "Te-X", "Upgrades", "X-Fogmesh-Source"} {
		if clean, took := parse(name); !took || !clean {
			t.Errorf("%q: parsed %t, HeaderClean %t; want a clean head", name, took, clean)
		}
	}
}
