package h2srv

import (
	"bytes"
	"net/http"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// TestTableSizeChangeLeadsNextBlock: the response encoder remembers the
// encodings of repeated fields (h2meta.Encoder); a client that shrinks its
// table mid-connection (SETTINGS_HEADER_TABLE_SIZE 0) must see the next
// response's block begin with the size update (RFC 7541 §4.2) and refer
// to no dynamic entry. Remembered encodings written past the change (the
// encoder's SetMaxDynamicTableSizeLimit not forgetting them) carried
// neither.
func TestTableSizeChangeLeadsNextBlock(t *testing.T) {
	addr := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Review", "some-value-worth-indexing")
		w.Header().Set("Date", "Mon, 07 Dec 2026 05:00:00 GMT") // the same on every response
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
	dec := hpack.NewDecoder(4096, nil)
	// response reads the frames up to stream id's response header block.
	response := func(id uint32) []byte {
		t.Helper()
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				t.Fatalf("stream %d: reading the response: %v", id, err)
			}
			if s, ok := f.(*http2.SettingsFrame); ok && !s.IsAck() {
				fr.WriteSettingsAck()
			}
			if h, ok := f.(*http2.HeadersFrame); ok && h.StreamID == id {
				return bytes.Clone(h.HeaderBlockFragment())
			}
		}
	}
	request := func(id uint32) {
		t.Helper()
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: b.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []uint32{1, 3, 5} { // from the second on, every field is indexed
		request(id)
		if _, err := dec.DecodeFull(response(id)); err != nil {
			t.Fatalf("stream %d: %v", id, err)
		}
	}
	if err := fr.WriteSettings(http2.Setting{ID: http2.SettingHeaderTableSize, Val: 0}); err != nil {
		t.Fatal(err)
	}
	request(7) // after the SETTINGS: the server reads them first
	block := response(7)
	if len(block) == 0 || block[0]&0xe0 != 0x20 {
		t.Fatalf("the block after SETTINGS_HEADER_TABLE_SIZE 0 begins %x, not with a dynamic table size update", block)
	}
	fresh := hpack.NewDecoder(0, nil) // no dynamic table: any reference to one fails
	fresh.SetAllowedMaxDynamicTableSize(0)
	fields, err := fresh.DecodeFull(block)
	if err != nil {
		t.Fatalf("the block after SETTINGS_HEADER_TABLE_SIZE 0 refers to the old table: %v", err)
	}
	if len(fields) == 0 || fields[0].Name != ":status" || fields[0].Value != "200" {
		t.Fatalf("fields %v", fields)
	}
}
