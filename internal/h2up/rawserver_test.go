package h2up_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"sync"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// serverFramer reads the client preface from c, a raw test server's
// accepted connection, and returns a framer on c that decodes header
// blocks (MetaHeadersFrame).
func serverFramer(c net.Conn) (*http2.Framer, error) {
	br := bufio.NewReader(c)
	if _, err := io.ReadFull(br, make([]byte, len(http2.ClientPreface))); err != nil {
		return nil, err
	}
	fr := http2.NewFramer(c, br)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	return fr, nil
}

// serveRawOnce listens on a loopback port and serves its first
// connection with serve, on a goroutine of its own, once it has read the
// client's preface and sent empty SETTINGS. It returns the port's
// address. When the test ends the listener and the connection are closed
// and the goroutine is waited for.
func serveRawOnce(t *testing.T, serve func(c net.Conn, fr *http2.Framer)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.86.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu sync.Mutex // guards the following
		c  net.Conn
	)
	done := make(chan struct{})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		if c != nil {
			c.Close()
		}
		mu.Unlock()
		<-done
	})
	go func() {
		defer close(done)
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		mu.Lock()
		c = conn
		mu.Unlock()
		fr, err := serverFramer(conn)
		if err != nil {
			return
		}
		fr.WriteSettings()
		serve(conn, fr)
	}()
	return ln.Addr().String()
}

// headerBlock HPACK-encodes fields, names and values in turn, as one
// header block.
func headerBlock(fields ...string) []byte {
	var b bytesBuffer
	enc := hpack.NewEncoder(&b)
	for i := 0; i+1 < len(fields); i += 2 {
		enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	return b
}

// serveStalling accepts connections on ln until it is closed, sending
// each to conns. On each it grants the largest send windows, then reads
// the client's frames up to its first request's HEADERS and never reads
// again: an endpoint that stopped reading, whose socket fills. conns
// must have room for every connection the test expects.
func serveStalling(ln net.Listener, conns chan<- net.Conn) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		conns <- c
		go stallAfterHeaders(c)
	}
}

func stallAfterHeaders(c net.Conn) {
	fr, err := serverFramer(c)
	if err != nil {
		return
	}
	fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1<<31 - 1})
	fr.WriteWindowUpdate(0, 1<<31-1-65535)
	firstHeaders(fr)
}

// firstHeaders reads the client's frames up to its first request's
// HEADERS and returns them (nil if the connection ended first).
func firstHeaders(fr *http2.Framer) *http2.MetaHeadersFrame {
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return nil
		}
		if h, ok := f.(*http2.MetaHeadersFrame); ok {
			return h
		}
	}
}

// dialTo is a pool's Dial to addr over TCP.
func dialTo(addr string) func(context.Context) (net.Conn, error) {
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
}
