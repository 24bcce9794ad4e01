package wire

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/fogmesh/fogmesh/internal/api"
)

func TestRoundTrip(t *testing.T) {
	svc := &api.Service{Meta: api.Meta{Name: "hello", Namespace: "demo"}, Spec: api.ServiceSpec{Ports: []api.ServicePort{{Port: 80}}}}
	if err := svc.Validate(); err != nil {
		t.Fatal(err)
	}
	res, err := NewResource(svc)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	in := &Message{Type: TypeUpdate, Version: 7, Nonce: "1", Full: true, Resources: []Resource{res},
		Removed: []ResourceRef{{Type: api.KindEndpoint, Name: "demo/x"}}}
	if err := Write(&buf, in); err != nil {
		t.Fatal(err)
	}
	r := NewReader(&buf)
	out, err := r.Read()
	if err != nil {
		t.Fatal(err)
	}
	if out.Version != 7 || len(out.Resources) != 1 || out.Removed[0].Name != "demo/x" {
		t.Fatalf("%+v", out)
	}
	o, err := DecodeResource(out.Resources[0])
	if err != nil || o.GetMeta().Key() != "demo/hello" {
		t.Fatal(o, err)
	}
	if _, err := r.Read(); err != io.EOF {
		t.Fatalf("want clean EOF, got %v", err)
	}
}

func TestReadRejects(t *testing.T) {
	for name, c := range map[string]struct {
		in   []byte
		want error
	}{
		"too large": {[]byte{0xff, 0, 0, 0}, ErrFrameTooLarge},
		"truncated": {[]byte{0, 0, 0, 9, '{'}, io.ErrUnexpectedEOF},
		"half hdr":  {[]byte{0, 0}, io.ErrUnexpectedEOF},
	} {
		_, err := NewReader(bytes.NewReader(c.in)).Read()
		if !errors.Is(err, c.want) {
			t.Errorf("%s: got %v want %v", name, err, c.want)
		}
	}
	if _, err := Decode([]byte(`{"type":"bogus"}`)); err == nil {
		t.Error("unknown type accepted")
	}
	// A resource whose body names another object is refused.
	svc := &api.Service{Meta: api.Meta{Name: "a"}, Spec: api.ServiceSpec{Ports: []api.ServicePort{{Port: 80}}}}
	svc.Validate()
	res, _ := NewResource(svc)
	res.Name = "default/b"
	if _, err := DecodeResource(res); err == nil {
		t.Error("mismatched resource name accepted")
	}
}

// FuzzReadFrame: hostile bytes on the sync port never crash the reader, and
// every frame it accepts re-encodes to a frame it accepts again.
func FuzzReadFrame(f *testing.F) {
	var buf bytes.Buffer
	Write(&buf, &Message{Type: TypeHello, Protocol: 1, Node: &api.Node{Meta: api.Meta{Name: "n"}}})
	f.Add(buf.Bytes())
	buf.Reset()
	Write(&buf, &Message{Type: TypeUpdate, Full: true, Resources: []Resource{{ResourceRef: ResourceRef{Type: "Service", Name: "a/b"}, Body: []byte(`{}`)}}})
	f.Add(buf.Bytes())
	f.Add([]byte{0, 0, 0, 2, '{', '}'})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := NewReader(bytes.NewReader(b))
		for i := 0; i < 8; i++ {
			m, err := r.Read()
			if err != nil {
				return
			}
			for _, res := range m.Resources {
				DecodeResource(res) // must not panic
			}
			var out bytes.Buffer
			if err := Write(&out, m); err != nil {
				t.Fatal(err)
			}
			if _, err := NewReader(&out).Read(); err != nil {
				t.Fatalf("re-encoded frame rejected: %v", err)
			}
		}
	})
}

// TestChunkFields: an update sent whole encodes exactly as before chunk
// fields existed; a chunk carries them; WriteFrame reports the body size.
func TestChunkFields(t *testing.T) {
	whole := &Message{Type: TypeUpdate, Version: 3, Nonce: "1", StoreID: "s"}
	var buf bytes.Buffer
	n, err := WriteFrame(&buf, whole)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"type":"update","storeId":"s","nonce":"1","version":3}`
	if got := buf.String()[4:]; got != want || n != len(want) {
		t.Fatalf("whole update frame %q (%d bytes), want %q", got, n, want)
	}
	buf.Reset()
	chunk := *whole
	chunk.Chunk, chunk.Chunks = 2, 3
	if err := Write(&buf, &chunk); err != nil {
		t.Fatal(err)
	}
	got, err := NewReader(&buf).Read()
	if err != nil || got.Chunk != 2 || got.Chunks != 3 {
		t.Fatalf("chunk read back as %+v, %v", got, err)
	}
}

// TestSVIDChains: an answer's chains are Certificates then SVIDBatch; a
// batch above the bounds, an empty chain or certificate, and a batch with
// no first chain are refused, by Decode too.
func TestSVIDChains(t *testing.T) {
	c := []byte{0x30}
	ok := &Message{Type: TypeSVIDIssued, Certificates: [][]byte{c}, SVIDBatch: [][][]byte{{c}, {c, c}}}
	got, err := SVIDChains(ok)
	if err != nil || len(got) != 3 || len(got[2]) != 2 {
		t.Fatalf("chains %v, %v", got, err)
	}
	big := make([][][]byte, MaxSVIDBatch)
	for i := range big {
		big[i] = [][]byte{c}
	}
	long := make([][]byte, MaxSVIDChain+1)
	for i := range long {
		long[i] = c
	}
	for name, m := range map[string]*Message{
		"too many":       {Type: TypeSVIDIssued, Certificates: [][]byte{c}, SVIDBatch: big},
		"chain too long": {Type: TypeSVIDIssued, Certificates: [][]byte{c}, SVIDBatch: [][][]byte{long}},
		"empty chain":    {Type: TypeSVIDIssued, Certificates: [][]byte{c}, SVIDBatch: [][][]byte{{}}},
		"empty cert":     {Type: TypeSVIDIssued, Certificates: [][]byte{c}, SVIDBatch: [][][]byte{{{}}}},
		"no first":       {Type: TypeSVIDIssued, SVIDBatch: [][][]byte{{c}}},
	} {
		if _, err := SVIDChains(m); err == nil {
			t.Errorf("%s: accepted", name)
		}
		var buf bytes.Buffer
		if err := Write(&buf, m); err != nil {
			t.Fatal(err)
		}
		if _, err := NewReader(&buf).Read(); err == nil {
			t.Errorf("%s: Decode accepted", name)
		}
	}
}

// FuzzSVIDChains: whatever an svidIssued frame holds, SVIDChains never
// crashes and what it accepts stays within the bounds.
func FuzzSVIDChains(f *testing.F) {
	f.Add([]byte(`{"type":"svidIssued","nonce":"1","certificates":["MA=="],"svidBatch":[["MA=="],["MA==","MA=="]]}`))
	f.Add([]byte(`{"type":"svidIssued","svidBatch":[[]]}`))
	f.Add([]byte(`{"type":"svidIssued","certificates":["MA=="],"svidBatch":[[""]]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b)
		if err != nil {
			return
		}
		chains, err := SVIDChains(m)
		if err != nil {
			return
		}
		if len(chains) > MaxSVIDBatch {
			t.Fatalf("%d chains accepted", len(chains))
		}
		for _, ch := range chains {
			if len(ch) == 0 || len(ch) > MaxSVIDChain {
				t.Fatalf("chain of %d accepted", len(ch))
			}
		}
	})
}
