package punch

import (
	"bytes"
	"errors"
	"log/slog"
	"net/netip"
	"testing"
)

const (
	testNonce = "00112233445566778899aabbccddeeff"
	idA       = "spiffe://fogmesh.local/site/a/node/a1"
	idB       = "spiffe://fogmesh.local/site/b/node/b1"
)

func testKey(t testing.TB, nonce string) Key {
	t.Helper()
	k, err := NewKey(nonce, idA, idB)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestProbeRoundTrip: a probe decodes to what was encoded and verifies
// under its key only; both ends derive the same key whatever their order.
func TestProbeRoundTrip(t *testing.T) {
	k := testKey(t, testNonce)
	kRev, err := NewKey(testNonce, idB, idA)
	if err != nil {
		t.Fatal(err)
	}
	if kRev != k {
		t.Fatal("the two ends derive different keys")
	}
	b := k.Append(nil, KindResponse, 1, 0x0102030405060708)
	if len(b) != ProbeSize {
		t.Fatalf("probe of %d bytes, want %d", len(b), ProbeSize)
	}
	p, err := ParseProbe(b)
	if err != nil {
		t.Fatal(err)
	}
	if p.Kind != KindResponse || p.Role != 1 || p.Seq != 0x0102030405060708 || p.Session != k.Session() {
		t.Fatalf("decoded %+v", p)
	}
	if !k.Verify(p, b) {
		t.Fatal("a probe does not verify under its own key")
	}
	other := testKey(t, "ffeeddccbbaa99887766554433221100")
	if other.Verify(p, b) {
		t.Fatal("a probe verifies under another introduction's key")
	}
	third, err := NewKey(testNonce, idA, "spiffe://fogmesh.local/site/c/node/c1")
	if err != nil {
		t.Fatal(err)
	}
	if third == k {
		t.Fatal("the same nonce with another peer gives the same key")
	}
	// Every single-bit flip is refused, by the decoder or by the MAC.
	for i := range len(b) * 8 {
		c := bytes.Clone(b)
		c[i/8] ^= 1 << (i % 8)
		if q, err := ParseProbe(c); err == nil && k.Verify(q, c) {
			t.Fatalf("bit %d flipped: still accepted", i)
		}
	}
}

// TestParseProbeRefusals: each kind of bad datagram gets its error.
func TestParseProbeRefusals(t *testing.T) {
	k := testKey(t, testNonce)
	good := k.Append(nil, KindRequest, 0, 1)
	mod := func(i int, v byte) []byte { c := bytes.Clone(good); c[i] = v; return c }
	for _, tc := range []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrProbeSize},
		{"short", good[:3], ErrProbeSize},
		{"truncated", good[:ProbeSize-1], ErrProbeSize},
		{"oversized", append(bytes.Clone(good), make([]byte, 1400)...), ErrProbeSize},
		{"one extra byte", append(bytes.Clone(good), 0), ErrProbeSize},
		{"stun", []byte{0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42}, ErrNotProbe},
		{"version", mod(4, 2), ErrProbeVersion},
		{"kind 0", mod(5, 0), ErrProbeField},
		{"kind 3", mod(5, 3), ErrProbeField},
		{"role 2", mod(6, 2), ErrProbeField},
		{"flags", mod(7, 1), ErrProbeField},
	} {
		if _, err := ParseProbe(tc.b); !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
	}
	if _, err := NewKey("abc", idA, idB); err == nil {
		t.Error("a short nonce makes a key")
	}
	if _, err := NewKey("zz112233445566778899aabbccddeeff", idA, idB); err == nil {
		t.Error("a nonce that is not hex makes a key")
	}
}

// TestReplayWindow: each seq is accepted once; reordering within the
// window passes; older or repeated ones are refused.
func TestReplayWindow(t *testing.T) {
	var w replayWindow
	steps := []struct {
		seq  uint64
		want bool
	}{
		{0, false}, {1, true}, {1, false}, {3, true}, {2, true}, {2, false}, {3, false},
		{100, true}, {37, true}, {36, false}, {99, true}, {99, false}, {300, true}, {237, true}, {236, false},
	}
	for i, s := range steps {
		if got := w.accept(s.seq); got != s.want {
			t.Fatalf("step %d: accept(%d) = %v, want %v", i, s.seq, got, s.want)
		}
	}
}

// FuzzParseProbe: hostile bytes never crash the decoder; what it accepts
// is exactly ProbeSize bytes and re-encodes to the same bytes under the
// key that made it; nothing else verifies.
func FuzzParseProbe(f *testing.F) {
	k := testKey(f, testNonce)
	f.Add(k.Append(nil, KindRequest, 0, 1))
	f.Add(k.Append(nil, KindResponse, 1, ^uint64(0)))
	f.Add([]byte{})
	f.Add([]byte("\x00FMP"))
	f.Add(append(k.Append(nil, KindRequest, 0, 7), make([]byte, 2000)...))
	f.Add([]byte{0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParseProbe(b)
		if err != nil {
			return
		}
		if len(b) != ProbeSize {
			t.Fatalf("accepted %d bytes", len(b))
		}
		if k.Verify(p, b) {
			if again := k.Append(nil, p.Kind, p.Role, p.Seq); !bytes.Equal(again, b) {
				t.Fatalf("verified probe %x re-encodes to %x", b, again)
			}
		}
	})
}

// FuzzPuncherCheck: hostile datagrams at a Puncher with a session open
// never crash it, and only a request made with the session's key by the
// other role is answered, at most once per seq.
func FuzzPuncherCheck(f *testing.F) {
	k := testKey(f, testNonce)
	f.Add(k.Append(nil, KindRequest, 1, 1))
	f.Add(k.Append(nil, KindRequest, 0, 2))
	f.Add(k.Append(nil, KindResponse, 1, 1))
	f.Add([]byte("\x00FMP\x01\x01\x01\x00"))
	f.Add(make([]byte, 1500))
	f.Fuzz(func(t *testing.T, b []byte) {
		p := &Puncher{sessions: map[[8]byte]*session{}, log: slog.New(slog.DiscardHandler)}
		s := &session{key: k, role: 0, peer: idB, sent: map[uint64]sentProbe{}, won: make(chan struct{})}
		p.sessions[k.Session()] = s
		from := netip.MustParseAddrPort("192.0.2.1:9")
		reply := p.check(b, from)
		if reply == nil {
			return
		}
		pr, err := ParseProbe(b)
		if err != nil || !k.Verify(pr, b) || pr.Role != 1 || pr.Kind != KindRequest {
			t.Fatalf("answered %x", b)
		}
		if p.check(b, from) != nil {
			t.Fatalf("answered %x twice", b)
		}
	})
}
