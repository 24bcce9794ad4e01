package h2srv

import (
	"bytes"
	"fmt"
	"net/http"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/fogmesh/fogmesh/internal/testenv"
)

// TestTableSizeShrinksWhileResponsesRun: a client lowers its HPACK table
// (SETTINGS_HEADER_TABLE_SIZE 2048 ... 0) in the middle of batches of
// concurrent streams, whose responses and trailers carry the stream's own
// :authority and authorization: every block decodes (strictly: a size
// update leads the first block after each acknowledged shrink) to the
// stream's own values (the response encoder's remembered encodings,
// h2meta.Encoder).
func TestTableSizeShrinksWhileResponsesRun(t *testing.T) {
	addr := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		echo := r.Host + "|" + r.Header.Get("Authorization")
		w.Header().Set("Trailer", "X-T")
		w.Header().Set("X-Echo", echo)
		w.Header().Set("Content-Type", "text/plain")
		w.Write([]byte("ok"))
		w.Header().Set("X-T", echo)
	})})
	c := rawConn(t, addr, nil)
	fr := http2.NewFramer(c, c)
	fr.WriteSettings()
	var b bytes.Buffer
	enc := hpack.NewEncoder(&b)
	d := testenv.NewStrictHPACK()
	want := map[uint32]string{}
	id := uint32(1)
	request := func(i int) {
		echo := fmt.Sprintf("h%d.demo|Bearer user-%d", i%2, i%3)
		host, auth, _ := bytes.Cut([]byte(echo), []byte("|"))
		b.Reset()
		for _, kv := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", string(host)},
			{":path", "/"}, {"authorization", string(auth)}} {
			enc.WriteField(hpack.HeaderField{Name: kv[0], Value: kv[1]})
		}
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: b.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
		want[id] = echo
		id += 2
	}
	var sent []uint32 // our table sizes not yet acknowledged
	var block []byte
	gotHead := map[uint32]bool{}
	for batch, size := range []uint32{4096, 2048, 1000, 200, 100, 60, 0, 0} {
		for i := range 10 {
			if i == 5 && size < 4096 {
				fr.WriteSettings(http2.Setting{ID: http2.SettingHeaderTableSize, Val: size})
				sent = append(sent, size)
			}
			request(batch*10 + i)
		}
		for len(want) > 0 {
			f, err := fr.ReadFrame()
			if err != nil {
				t.Fatalf("batch %d: %v (streams %v left)", batch, err, want)
			}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if !f.IsAck() {
					fr.WriteSettingsAck()
				} else if len(sent) > 0 {
					d.Acked(sent[0])
					sent = sent[1:]
				}
				continue
			case *http2.HeadersFrame:
				block = append(block[:0], f.HeaderBlockFragment()...)
				if !f.HeadersEnded() {
					continue
				}
			case *http2.ContinuationFrame:
				block = append(block, f.HeaderBlockFragment()...)
				if !f.HeadersEnded() {
					continue
				}
			case *http2.GoAwayFrame:
				t.Fatalf("batch %d: GOAWAY %v", batch, f.ErrCode)
			default:
				continue
			}
			sid := f.Header().StreamID
			fields, err := d.Decode(block)
			if err != nil {
				t.Fatalf("batch %d stream %d: %v", batch, sid, err)
			}
			name := "x-echo"
			if gotHead[sid] {
				name = "x-t" // the trailers
			}
			var got string
			for _, hf := range fields {
				if hf.Name == name {
					got = hf.Value
				}
			}
			if got != want[sid] {
				t.Fatalf("batch %d stream %d: %s %q, want %q (fields %v)", batch, sid, name, got, want[sid], fields)
			}
			if gotHead[sid] {
				delete(want, sid)
				delete(gotHead, sid)
			} else {
				gotHead[sid] = true
			}
		}
	}
}
