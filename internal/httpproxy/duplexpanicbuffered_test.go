package httpproxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// panicLaterBody sends "hello", then (its client slow: BodyWaits) waits
// for fire and panics in its read on sendRest; Duplex hands the done
// channel of sendRest on dones.
type panicLaterBody struct {
	started bool
	fire    chan struct{}
	dones   chan (<-chan struct{})
}

func (b *panicLaterBody) Read(p []byte) (int, error) {
	if !b.started {
		b.started = true
		return copy(p, "hello"), nil
	}
	<-b.fire
	panic("test: a bug while reading a request body")
}

func (b *panicLaterBody) BodyWaits(SendRoomer) bool { return b.started }

func (b *panicLaterBody) Duplex(done <-chan struct{}) bool {
	b.dones <- done
	return true
}

// earlyWholeUpstream answers each connection's first request at its head
// with a whole 2-byte answer, then reads on (and discards) whatever comes.
func earlyWholeUpstream(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					line, err := br.ReadString('\n')
					if err != nil {
						return
					}
					if line == "\r\n" {
						break
					}
				}
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				io.Copy(io.Discard, br)
			}()
		}
	}()
	return ln.Addr().String()
}

// TestPoolDuplexPanicAnswerBuffered: the body's read panicking on sendRest
// after the answer's head was returned, the answer's body all in the
// reader's buffer already: its read fails with BodyPanicError, as it does
// when the answer's bytes are still to come (the read of the poisoned
// connection), not with the answer's end (the agent then recorded the
// request with the endpoint's status and no error, the panic only in
// OnPanic's log); the connection is not reused.
func TestPoolDuplexPanicAnswerBuffered(t *testing.T) {
	p := duplexPool(earlyWholeUpstream(t))
	defer p.Close(true)
	panicked := make(chan any, 1)
	p.cfg.OnPanic = func(v any) { panicked <- v }
	b := &panicLaterBody{fire: make(chan struct{}), dones: make(chan (<-chan struct{}), 1)}
	ctx := WithStreamCancel(context.Background())
	SetBodyWaiter(ctx, b)
	req, err := http.NewRequestWithContext(ctx, "POST", "http://svc/upload", io.NopCloser(b))
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = -1
	resp, err := p.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	var done <-chan struct{}
	select {
	case done = <-b.dones:
	default:
		t.Fatal("the body did not go full duplex")
	}
	close(b.fire)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("sendRest still runs 10 s after its read panicked")
	}
	if v := <-panicked; v != "test: a bug while reading a request body" {
		t.Fatalf("OnPanic got %v", v)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	var bpe *BodyPanicError
	if !errors.As(err, &bpe) || bpe.Value != "test: a bug while reading a request body" {
		t.Fatalf("the answer read %q, %v; want a BodyPanicError with the panic's value", got, err)
	}
	p.mu.Lock()
	left := len(p.all)
	p.mu.Unlock()
	if left != 0 {
		t.Errorf("%d connections left in the pool after the panic", left)
	}
}

// TestPoolSendRoom: a new loopback connection has room for more than
// the agent writes on the round trip's goroutine (64 KiB); one whose
// endpoint reads nothing, written to until its socket is full, has a
// fraction of that left (acknowledged meanwhile); one with no socket of its own cannot tell.
func TestPoolSendRoom(t *testing.T) {
	p := duplexPool(deafUpstream(t))
	defer p.Close(true)
	pc, err := p.get(context.Background(), true, 0, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	fresh := pc.SendRoom()
	if fresh < 64<<10 {
		t.Fatalf("a new loopback connection: room for %d bytes, want at least 64 KiB", fresh)
	}
	pc.bw.WriteString("x")
	before := pc.SendRoom()
	pc.bw.Reset(pc.c)
	if after := pc.SendRoom(); after != before+1 {
		t.Errorf("room %d with a byte in the writer, %d without, want one more", before, after)
	}
	pc.c.SetWriteDeadline(time.Now().Add(time.Second))
	chunk := make([]byte, 64<<10)
	for {
		if _, err := pc.c.Write(chunk); err != nil {
			break // the socket is full: the endpoint reads nothing
		}
	}
	if room := pc.SendRoom(); room > fresh/4 {
		t.Errorf("a full socket: room for %d bytes, %d when new", room, fresh)
	}
	pc.rc = nil
	if room := pc.SendRoom(); room != -1 {
		t.Errorf("no socket: room %d, want -1", room)
	}
}
