// Command h2bare is the smallest HTTP/2 (h2c, prior knowledge) reverse
// proxy in Go that still does an HTTP/2 proxy's per-request work, to set
// against the agent's h2c and gRPC paths (issue 14): each client
// connection gets its own upstream connection, and two goroutines relay
// between them, one each way, frame by frame with golang.org/x/net/http2's
// Framer. Header blocks are decoded (HPACK) and encoded again for the
// other connection, as a proxy must; stream IDs stay as the client chose
// them (one upstream connection per client connection); received DATA is
// credited back to its sender (WINDOW_UPDATE) once half a window has come,
// per connection and per stream, as the agent does; SETTINGS and PING
// are answered on the connection they came on, not relayed. No routing,
// header rewriting, per-request balancing, metrics or policy, no goroutine
// per stream: the difference to the agent is what those cost. A receiver
// whose window is smaller than the sender's is not respected (the
// benchmark's messages are small); GOAWAY ends both connections.
//
// Usage: h2bare LISTEN=TARGET
package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

func main() {
	listen, target, ok := strings.Cut(strings.Join(os.Args[1:], " "), "=")
	if len(os.Args) != 2 || !ok {
		fmt.Fprintln(os.Stderr, "usage: h2bare LISTEN=TARGET")
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "h2bare:", err)
		os.Exit(1)
	}
	fmt.Fprintln(os.Stderr, "h2bare:", proxy(ln, target))
	os.Exit(1)
}

// proxy serves ln until it fails, forwarding to target.
func proxy(ln net.Listener, target string) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go serve(c, target)
	}
}

// window is what each side is offered: the connection's and every
// stream's receive window (credited back once half of it has come).
const window = 1 << 20

// side is one connection: its reader, and its writer shared by both
// relay goroutines under mu.
type side struct {
	fr  *http2.Framer // reads (the owning relay goroutine) and writes (under mu)
	bw  *bufio.Writer
	mu  sync.Mutex
	enc *hpack.Encoder // under mu: header blocks written to this side
	hb  bytes.Buffer   // under mu
	br  *bufio.Reader

	// Read side only (its relay goroutine): DATA received and not yet
	// credited back, on the connection and per open stream.
	owedConn uint32
	owed     map[uint32]uint32
}

func newSide(c net.Conn) *side {
	s := &side{bw: bufio.NewWriterSize(c, 16<<10), br: bufio.NewReaderSize(c, 16<<10), owed: map[uint32]uint32{}}
	s.fr = http2.NewFramer(s.bw, s.br)
	s.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	s.fr.MaxHeaderListSize = 1 << 20
	s.enc = hpack.NewEncoder(&s.hb)
	return s
}

// write runs fn under the writer's lock, then flushes unless the reader
// that called it has more buffered to relay (from, nil: flush).
func (s *side) write(from *side, fn func() error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := fn(); err != nil {
		return err
	}
	if from != nil && from.br.Buffered() > 0 {
		return nil
	}
	return s.bw.Flush()
}

func (s *side) flush() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bw.Flush()
}

func serve(c net.Conn, target string) {
	defer c.Close()
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(c, preface); err != nil || string(preface) != http2.ClientPreface {
		return
	}
	u, err := net.Dial("tcp", target)
	if err != nil {
		return
	}
	defer u.Close()
	client, up := newSide(c), newSide(u)
	if _, err := up.bw.WriteString(http2.ClientPreface); err != nil {
		return
	}
	for _, s := range []*side{client, up} {
		s.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: window},
			http2.Setting{ID: http2.SettingMaxFrameSize, Val: 16384})
		s.fr.WriteWindowUpdate(0, window-65535)
		if s.bw.Flush() != nil {
			return
		}
	}
	done := make(chan struct{}, 2)
	go func() { relay(client, up); done <- struct{}{} }()
	go func() { relay(up, client); done <- struct{}{} }()
	<-done
	c.Close()
	u.Close()
	<-done
}

// relay reads frames from src and relays them to dst until either fails.
func relay(src, dst *side) {
	for {
		if src.br.Buffered() == 0 {
			if dst.flush() != nil {
				return
			}
		}
		f, err := src.fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				if src.write(nil, func() error { return src.fr.WriteRSTStream(se.StreamID, se.Code) }) != nil {
					return
				}
				continue
			}
			return
		}
		if !relayFrame(src, dst, f) {
			return
		}
	}
}

func relayFrame(src, dst *side, f http2.Frame) bool {
	id := f.Header().StreamID
	var err error
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		if f.StreamEnded() {
			delete(src.owed, id)
		}
		err = dst.write(src, func() error {
			dst.hb.Reset()
			for _, hf := range f.Fields {
				dst.enc.WriteField(hf)
			}
			return dst.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: dst.hb.Bytes(),
				EndStream: f.StreamEnded(), EndHeaders: true})
		})
	case *http2.DataFrame:
		data := f.Data()
		err = dst.write(src, func() error { return dst.fr.WriteData(id, f.StreamEnded(), data) })
		if err == nil {
			err = src.credit(id, f.Length, f.StreamEnded())
		}
	case *http2.SettingsFrame:
		if !f.IsAck() {
			err = src.write(nil, src.fr.WriteSettingsAck)
		}
	case *http2.PingFrame:
		if !f.IsAck() {
			err = src.write(nil, func() error { return src.fr.WritePing(true, f.Data) })
		}
	case *http2.RSTStreamFrame:
		delete(src.owed, id)
		err = dst.write(src, func() error { return dst.fr.WriteRSTStream(id, f.ErrCode) })
	case *http2.GoAwayFrame:
		return false
	case *http2.WindowUpdateFrame, *http2.PriorityFrame:
		// Credit for what this proxy sends: it relays at the sender's
		// pace (see the package comment).
	default:
		return false // PUSH_PROMISE (refused in SETTINGS by clients) or unknown
	}
	return err == nil
}

// credit counts n bytes of DATA received on stream id and sends the
// WINDOW_UPDATEs that are due: half a window on the connection, or on a
// stream that goes on.
func (s *side) credit(id, n uint32, ended bool) error {
	if n == 0 {
		return nil
	}
	s.owedConn += n
	var stream uint32
	if ended {
		delete(s.owed, id)
	} else if s.owed[id] += n; s.owed[id] >= window/2 {
		stream, s.owed[id] = s.owed[id], 0
	}
	var conn uint32
	if s.owedConn >= window/2 {
		conn, s.owedConn = s.owedConn, 0
	}
	if stream == 0 && conn == 0 {
		return nil
	}
	return s.write(nil, func() error {
		if stream > 0 {
			s.fr.WriteWindowUpdate(id, stream)
		}
		if conn > 0 {
			return s.fr.WriteWindowUpdate(0, conn)
		}
		return nil
	})
}
