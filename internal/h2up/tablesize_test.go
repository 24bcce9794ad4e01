package h2up_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/fogmesh/fogmesh/internal/h2up"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// TestTableSizeChangesWhileStreamsRun: an endpoint shrinks its HPACK
// table (SETTINGS_HEADER_TABLE_SIZE 2048, 1000, 200, 100, 60, 0) while many
// requests with their own :authority and authorization are in flight on
// one connection: every request reaches it with its own fields, every
// block after an acknowledged shrink leads with the size update, and no
// block refers to an entry the endpoint's table no longer has (the
// request encoder's remembered encodings, h2meta.Encoder).
func TestTableSizeChangesWhileStreamsRun(t *testing.T) {
	ln, err := net.Listen("tcp", "127.81.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srvErr := make(chan error, 1)
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		defer ln.Close() // one connection: a redial after it fails at once
		if err := serveShrinking(c); err != nil {
			srvErr <- err
		}
	}()
	pool := h2up.New(h2up.Config{Dial: dialTo(ln.Addr().String())})
	defer pool.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const clients, each = 8, 60
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for g := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				// Few values, all indexed soon: the encoder's remembered
				// encodings make most blocks.
				host := fmt.Sprintf("h%d.demo", (g+i)%2)
				auth := fmt.Sprintf("Bearer user-%d", (g/2+i)%2)
				req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+host+"/p", nil)
				req.Header.Set("Authorization", auth)
				req.Header.Set("User-Agent", "review")
				req.Header.Set("X-Forwarded-For", "127.0.0.1")
				want := host + "|" + auth
				req.Header.Set("X-Check", want)
				resp, err := pool.RoundTrip(req)
				if err != nil {
					errs <- fmt.Errorf("client %d request %d: %w", g, i, err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if got := resp.Header.Get("X-Echo"); got != want {
					errs <- fmt.Errorf("client %d request %d: the endpoint read %q, want %q", g, i, got, want)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		select {
		case serr := <-srvErr:
			t.Fatalf("endpoint: %v (client: %v)", serr, err)
		default:
		}
		t.Fatal(err)
	}
}

// serveShrinking is the endpoint: it answers each request with the
// :authority and authorization it decoded and lowers its table size
// every 40 requests.
func serveShrinking(c net.Conn) error {
	if _, err := io.ReadFull(c, make([]byte, len(http2.ClientPreface))); err != nil {
		return err
	}
	fr := http2.NewFramer(c, c)
	fr.WriteSettings()
	d := testenv.NewStrictHPACK()
	var out bytes.Buffer
	enc := hpack.NewEncoder(&out)
	sizes := []uint32{2048, 1000, 200, 100, 60, 0}
	var sent []uint32 // our SETTINGS_HEADER_TABLE_SIZE values not yet acknowledged
	var block []byte
	requests := 0
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return nil // the client's close
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			} else if len(sent) > 0 {
				d.Acked(sent[0])
				sent = sent[1:]
			}
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
		case *http2.PingFrame:
			if !f.IsAck() {
				fr.WritePing(true, f.Data)
			}
			continue
		default:
			continue
		}
		if _, ok := f.(*http2.SettingsFrame); ok {
			continue
		}
		fields, err := d.Decode(block)
		if err != nil {
			return err
		}
		var authority, auth, check string
		for _, hf := range fields {
			switch hf.Name {
			case ":authority":
				authority = hf.Value
			case "authorization":
				auth = hf.Value
			case "x-check":
				check = hf.Value
			}
		}
		got := authority + "|" + auth
		if got != check {
			return fmt.Errorf("request read as %q, its x-check says %q (fields %v)", got, check, fields)
		}
		out.Reset()
		enc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
		enc.WriteField(hpack.HeaderField{Name: "x-echo", Value: got})
		id := f.Header().StreamID
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: out.Bytes(), EndHeaders: true, EndStream: true}); err != nil {
			return err
		}
		requests++
		if requests%40 == 0 && len(sizes) > 0 {
			fr.WriteSettings(http2.Setting{ID: http2.SettingHeaderTableSize, Val: sizes[0]})
			sent = append(sent, sizes[0])
			sizes = sizes[1:]
		}
	}
}
