package agent

import (
	"net"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/wire"
)

// scriptedControl is a control plane on a loopback socket that plays one
// script per accepted stream: it answers hello with welcome, hands the
// subscribe to the test, then runs the stream's script.
type scriptedControl struct {
	ln   net.Listener
	subs chan *wire.Message // each stream's subscribe
	errs chan error
}

func startScriptedControl(t *testing.T, scripts ...func(c net.Conn, r *wire.Reader) error) *scriptedControl {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sc := &scriptedControl{ln: ln, subs: make(chan *wire.Message, len(scripts)), errs: make(chan error, len(scripts))}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, script := range scripts {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if err := sc.serve(c, script); err != nil {
				sc.errs <- err
			}
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return sc
}

func (sc *scriptedControl) serve(c net.Conn, script func(net.Conn, *wire.Reader) error) error {
	c.SetDeadline(time.Now().Add(20 * time.Second))
	r := wire.NewReader(c)
	if _, err := readType(r, wire.TypeHello); err != nil {
		return err
	}
	if err := wire.Write(c, &wire.Message{Type: wire.TypeWelcome, Version: 9, StoreID: "s1", HeartbeatMillis: 1000}); err != nil {
		return err
	}
	sub, err := readType(r, wire.TypeSubscribe)
	if err != nil {
		return err
	}
	sc.subs <- sub
	return script(c, r)
}

// readType reads frames until one of type typ, skipping the agent's
// heartbeats, local endpoints and sessions.
func readType(r *wire.Reader, typ string) (*wire.Message, error) {
	for i := 0; i < 100; i++ {
		m, err := r.Read()
		if err != nil {
			return nil, err
		}
		if m.Type == typ {
			return m, nil
		}
	}
	return nil, net.ErrClosed
}

func (sc *scriptedControl) nextSubscribe(t *testing.T) *wire.Message {
	t.Helper()
	select {
	case m := <-sc.subs:
		return m
	case err := <-sc.errs:
		t.Fatalf("control script: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("no subscribe within 20s")
	}
	return nil
}

// update sends an update and returns the agent's answer (ack or nack).
func update(c net.Conn, r *wire.Reader, m *wire.Message) (*wire.Message, error) {
	if err := wire.Write(c, m); err != nil {
		return nil, err
	}
	for i := 0; i < 100; i++ {
		a, err := r.Read()
		if err != nil {
			return nil, err
		}
		if a.Type == wire.TypeAck || a.Type == wire.TypeNack {
			return a, nil
		}
	}
	return nil, net.ErrClosed
}

// TestSyncNackResubscribesInFull: an update the agent cannot apply is
// NACKed, the stream ends, and the next stream's subscribe asks for a full
// snapshot (version 0) although the agent holds version 5; after that
// snapshot it asks for deltas again. The protocol machine lives across
// streams in syncLoop.
func TestSyncNackResubscribesInFull(t *testing.T) {
	answers := make(chan *wire.Message, 4)
	sc := startScriptedControl(t,
		func(c net.Conn, r *wire.Reader) error {
			a, err := update(c, r, &wire.Message{Type: wire.TypeUpdate, Version: 5, Nonce: "1", StoreID: "s1"})
			if err != nil {
				return err
			}
			answers <- a
			bad := &wire.Message{Type: wire.TypeUpdate, Version: 6, Nonce: "2", StoreID: "s1",
				Resources: []wire.Resource{{ResourceRef: wire.ResourceRef{Type: wire.ResourceService, Name: "demo/web"}, Version: 6, Body: []byte(`{"kind":"Nope"}`)}}}
			if a, err = update(c, r, bad); err != nil {
				return err
			}
			answers <- a
			return nil
		},
		func(c net.Conn, r *wire.Reader) error {
			a, err := update(c, r, &wire.Message{Type: wire.TypeUpdate, Full: true, Version: 6, Nonce: "1", StoreID: "s1"})
			answers <- a
			return err // then close: the agent reconnects
		},
		func(c net.Conn, r *wire.Reader) error {
			_, err := readType(r, "never") // hold the stream until the test ends
			return err
		},
	)
	startAgent(t, agentOpts{name: "n1", site: "s1", region: "r1", vipOctet: 224,
		control: []string{sc.ln.Addr().String()}, stateDir: t.TempDir()})

	next := func() *wire.Message {
		t.Helper()
		select {
		case a := <-answers:
			return a
		case err := <-sc.errs:
			t.Fatalf("control script: %v", err)
		case <-time.After(20 * time.Second):
			t.Fatal("no answer within 20s")
		}
		return nil
	}
	if sub := sc.nextSubscribe(t); sub.KnownVersion != 0 {
		t.Fatalf("first subscribe of an agent without cache: knownVersion %d, want 0", sub.KnownVersion)
	}
	if a := next(); a.Type != wire.TypeAck || a.Version != 5 || a.Nonce != "1" {
		t.Fatalf("answer to update 5: %+v, want ack of nonce 1", a)
	}
	if a := next(); a.Type != wire.TypeNack || a.Version != 6 || a.Nonce != "2" || a.Error == "" {
		t.Fatalf("answer to the bad update 6: %+v, want nack of nonce 2 with an error", a)
	}
	if sub := sc.nextSubscribe(t); sub.StoreID != "s1" || sub.KnownVersion != 0 {
		t.Fatalf("subscribe after a NACK: store %q knownVersion %d, want s1 and 0 (full snapshot)", sub.StoreID, sub.KnownVersion)
	}
	if a := next(); a == nil || a.Type != wire.TypeAck || a.Version != 6 {
		t.Fatalf("answer to the snapshot: %+v, want ack of version 6", a)
	}
	if sub := sc.nextSubscribe(t); sub.StoreID != "s1" || sub.KnownVersion != 6 {
		t.Fatalf("subscribe after the snapshot: store %q knownVersion %d, want s1 and 6 (deltas again)", sub.StoreID, sub.KnownVersion)
	}
}
