package h2up_test

import (
	"bufio"
	"context"
	"io"
	"net"

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

// dialTo is a pool's Dial to addr over TCP.
func dialTo(addr string) func(context.Context) (net.Conn, error) {
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
}
