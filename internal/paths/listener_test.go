package paths

import (
	"net"
	"sync/atomic"
	"testing"
)

// tempErr is an accept error like EMFILE: temporary.
type tempErr struct{}

func (tempErr) Error() string   { return "accept: too many open files (test)" }
func (tempErr) Timeout() bool   { return false }
func (tempErr) Temporary() bool { return true }

// flakyListener fails its first n Accepts with a temporary error.
type flakyListener struct {
	net.Listener
	n atomic.Int64
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.n.Add(-1) >= 0 {
		return nil, tempErr{}
	}
	return l.Listener.Accept()
}

// TestListenerSurvivesTemporaryAcceptErrors: a temporary accept error
// (EMFILE and friends) on the mesh port does not close the agent's
// listener: connections accepted afterwards are served.
func TestListenerSurvivesTemporaryAcceptErrors(t *testing.T) {
	b := newNode(t, "b")
	m, err := New(Config{Self: "b", Dialer: b.dialer})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fl := &flakyListener{Listener: ln}
	fl.n.Store(3)
	l := m.Listener(fl)
	defer l.Close()
	b.addr = ln.Addr().String()

	for range 3 {
		if _, err := l.Accept(); err == nil {
			t.Fatal("accepted a connection nobody opened")
		} else if te, ok := err.(interface{ Temporary() bool }); !ok || !te.Temporary() {
			t.Fatalf("accept error %v is not temporary: the listener gave up", err)
		}
	}
	c, err := net.Dial("tcp", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, err := l.Accept()
	if err != nil {
		t.Fatalf("accept after temporary errors: %v", err)
	}
	got.Close()
}
