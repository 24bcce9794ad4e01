package relay

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

func frameBytes(t testing.TB, typ byte, msg any) []byte {
	b, err := AppendFrame(nil, typ, msg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func rawFrame(typ byte, n uint32, payload string) []byte {
	b := []byte{typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], n)
	return append(b, payload...)
}

// TestReadFrame: real frames decode; bad ones are FrameErrors with the
// reason the relay counts.
func TestReadFrame(t *testing.T) {
	nonce := strings.Repeat("ab", 16)
	good := frameBytes(t, TypeIntroduce, &Introduce{Nonce: nonce, Time: 1, Peer: "spiffe://fogmesh.local/site/a/node/b", Candidates: []string{"10.0.0.1:7072", "[fd00::1]:7072"}})
	f, err := ReadFrame(bytes.NewReader(good))
	if err != nil {
		t.Fatal(err)
	}
	var m Introduce
	if err := f.Decode(&m); err != nil || m.Nonce != nonce || len(m.Candidates) != 2 {
		t.Fatalf("%+v %v", m, err)
	}
	if _, err := ReadFrame(bytes.NewReader(nil)); err != io.EOF {
		t.Errorf("empty: %v, want io.EOF", err)
	}
	for _, c := range []struct {
		name   string
		in     []byte
		reason string
	}{
		{"too large", rawFrame(TypeIntroduce, MaxFrameSize+1, ""), ReasonFrameTooLarge},
		{"huge length", rawFrame(TypeIntroduce, 0xffffffff, ""), ReasonFrameTooLarge},
		{"short header", []byte{TypeIntroduce, 0, 0}, ReasonFrameTrunc},
		{"short payload", rawFrame(TypeIntroduce, 10, "{}"), ReasonFrameTrunc},
		{"unknown type", rawFrame(200, 2, "{}"), ReasonFrameType},
		{"type zero", rawFrame(0, 2, "{}"), ReasonFrameType},
	} {
		_, err := ReadFrame(bytes.NewReader(c.in))
		var fe *FrameError
		if !errors.As(err, &fe) || fe.Reason != c.reason {
			t.Errorf("%s: %v, want %s", c.name, err, c.reason)
		}
	}
	for _, c := range []struct {
		name, payload string
		msg           message
	}{
		{"not json", "{", &Introduce{}},
		{"trailing", `{"nonce":"` + nonce + `","peer":"p"} {}`, &Introduce{}},
		{"bad nonce", `{"nonce":"xyz","peer":"p"}`, &Introduce{}},
		{"no peer", `{"nonce":"` + nonce + `"}`, &Introduce{}},
		{"bad candidate", `{"nonce":"` + nonce + `","peer":"p","candidates":["host:1"]}`, &Introduce{}},
		{"too many candidates", `{"candidates":["1.1.1.1:1","1.1.1.1:1","1.1.1.1:1","1.1.1.1:1","1.1.1.1:1","1.1.1.1:1","1.1.1.1:1","1.1.1.1:1","1.1.1.1:1","1.1.1.1:1","1.1.1.1:1","1.1.1.1:1","1.1.1.1:1","1.1.1.1:1","1.1.1.1:1","1.1.1.1:1","1.1.1.1:1"]}`, &Candidates{}},
		{"wrong type", `{"peer":"p"}`, &Accept{}},
		{"bad session", `{"session":"../x"}`, &Accept{}},
	} {
		typ := c.msg.frameType()
		if c.name == "wrong type" {
			typ = TypeDial
		}
		err := Frame{Type: typ, Payload: []byte(c.payload)}.Decode(c.msg)
		var fe *FrameError
		if !errors.As(err, &fe) || fe.Reason != ReasonFrameBad {
			t.Errorf("%s: %v, want %s", c.name, err, ReasonFrameBad)
		}
	}
	if _, err := AppendFrame(nil, TypeCandidates, &Candidates{Candidates: []string{strings.Repeat("x", MaxFrameSize)}}); err == nil {
		t.Error("an oversized frame was encoded")
	}
}

// FuzzReadFrame: no input crashes the decoder or a message's checks, and
// nothing it accepts is larger than MaxFrameSize.
func FuzzReadFrame(f *testing.F) {
	nonce := strings.Repeat("0f", 16)
	session := strings.Repeat("1e", 16)
	for _, seed := range [][]byte{
		frameBytes(f, TypeHello, &Hello{Node: "spiffe://fogmesh.local/site/a/node/b", Observed: "1.2.3.4:5", UDPToken: session}),
		frameBytes(f, TypeCandidates, &Candidates{Candidates: []string{"192.168.1.5:7072"}}),
		frameBytes(f, TypeIntroduce, &Introduce{Nonce: nonce, Time: 1, Peer: "spiffe://fogmesh.local/site/a/node/b"}),
		frameBytes(f, TypeIntroduced, &Introduced{Nonce: nonce, Peer: "p", Candidates: []string{"[::1]:1"}}),
		frameBytes(f, TypeError, &Error{Reason: "replay"}),
		frameBytes(f, TypeDial, &Dial{Peer: "spiffe://fogmesh.local/site/a/node/b"}),
		frameBytes(f, TypeIncoming, &Incoming{Session: session, Peer: "p"}),
		frameBytes(f, TypeAccept, &Accept{Session: session}),
		frameBytes(f, TypeReady, &Ready{Session: session}),
		frameBytes(f, TypePing, &Ping{ID: nonce}),
		frameBytes(f, TypePong, &Pong{ID: nonce}),
		frameBytes(f, TypeUDPBind, &UDPBind{Nonce: nonce, Peer: "spiffe://fogmesh.local/site/a/node/b"}),
		frameBytes(f, TypeUDPBound, &UDPBound{Nonce: nonce, Channel: session, Peer: "p", Side: 1, Key: session + session, Port: 7073}),
		frameBytes(f, TypeUDPBound, &UDPBound{Channel: session, Peer: "p", Key: session + session, Port: 70000}),
		frameBytes(f, TypeUDPClose, &UDPClose{Channel: session, Reason: "idle"}),
		rawFrame(TypeIntroduce, MaxFrameSize+1, ""),
		rawFrame(99, 0, ""),
		{TypeDial, 0},
	} {
		f.Add(seed)
	}
	msgs := func() []message {
		return []message{&Hello{}, &Candidates{}, &Introduce{}, &Introduced{}, &Error{}, &Dial{}, &Incoming{}, &Accept{}, &Ready{}, &Ping{}, &Pong{},
			&UDPBind{}, &UDPBound{}, &UDPClose{}}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		for {
			fr, err := ReadFrame(r)
			if err != nil {
				return
			}
			if len(fr.Payload) > MaxFrameSize || !knownType(fr.Type) {
				t.Fatalf("accepted type %d with %d bytes", fr.Type, len(fr.Payload))
			}
			for _, m := range msgs() {
				if m.frameType() == fr.Type {
					fr.Decode(m)
				}
			}
		}
	})
}

// FuzzUDPRequest: no packet crashes the reflexive request parser.
func FuzzUDPRequest(f *testing.F) {
	req, _ := AppendUDPRequest(nil, strings.Repeat("ab", 16))
	f.Add(req)
	f.Add(req[:udpRequestLen-1])
	f.Add([]byte("FMRU"))
	f.Fuzz(func(t *testing.T, p []byte) {
		if tok, err := ParseUDPRequest(p); err == nil && len(tok) != udpTokenLen {
			t.Fatalf("token of %d bytes", len(tok))
		}
	})
}

// TestRelayClosesOnBadFrames: on a real control connection, an oversized,
// an unknown-type, a malformed and an unexpected frame each close the
// connection with its counted reason, and the relay goes on serving.
func TestRelayClosesOnBadFrames(t *testing.T) {
	f := newFixture(t, nil)
	src := source(t, f.ca, "site-a", "x")
	cfg := src.ClientConfig(AuthorizeRelay(f.td), ALPNControl)
	for _, c := range []struct {
		in     []byte
		reason string
	}{
		{rawFrame(TypeIntroduce, 1<<30, ""), ReasonFrameTooLarge},
		{rawFrame(77, 2, "{}"), ReasonFrameType},
		{rawFrame(TypeIntroduce, 5, "{nope"), ReasonFrameBad},
		{rawFrame(TypeReady, 2, "{}"), ReasonUnexpected},
		{rawFrame(TypeIntroduce, 1000, "{}"), ReasonFrameTrunc}, // then the client closes
	} {
		conn, err := tls.Dial("tcp", f.addr, cfg)
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(20 * time.Second))
		if fr, err := ReadFrame(conn); err != nil || fr.Type != TypeHello {
			t.Fatalf("hello: %v %v", fr, err)
		}
		conn.Write(c.in)
		if c.reason == ReasonFrameTrunc {
			conn.CloseWrite()
		}
		if _, err := ReadFrame(conn); err == nil {
			t.Errorf("%s: the connection stayed open", c.reason)
		}
		conn.Close()
		waitFor(t, c.reason+" counted", func() bool { return f.metric(refused(c.reason)) == 1 })
	}
	y := f.node("site-b", "y") // still serving
	if y.c.Hello().Node != y.id {
		t.Fatal(y.c.Hello())
	}
}

// TestBucket: the token bucket lets a burst through, then makes a sender
// wait for its debt at the configured rate.
func TestBucket(t *testing.T) {
	now := time.Unix(1000, 0)
	b := newBucket(1000, 500, func() time.Time { return now })
	if d := b.take(500); d != 0 {
		t.Fatalf("burst: wait %v", d)
	}
	if d := b.take(250); d != 250*time.Millisecond {
		t.Fatalf("debt of 250 bytes at 1000 B/s: wait %v", d)
	}
	now = now.Add(250 * time.Millisecond) // debt repaid
	if d := b.take(100); d != 100*time.Millisecond {
		t.Fatalf("after the wait: %v", d)
	}
	now = now.Add(time.Hour) // refills to the burst, no more
	if d := b.take(600); d != 100*time.Millisecond {
		t.Fatalf("after an hour: %v", d)
	}
}
