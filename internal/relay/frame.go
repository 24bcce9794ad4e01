// Package relay is fogmesh's relay (issue 12): a small server with a
// reachable address that agents behind NATs keep one authenticated
// connection to. It tells each agent its address as seen from outside
// (over TCP and UDP), introduces two agents that want to talk by exchanging
// their candidate addresses, and forwards bytes between two agents when no
// direct path works. It never holds a key that can read the agents'
// traffic: the agents run their own TLS session end to end through a
// relayed connection; the relay only terminates the outer, per-hop TLS.
//
// The package holds the wire format (this file), the server (server.go,
// session.go, udp.go), the client agents use (client.go, pool.go) and UDP
// channels, a relayed path over UDP that carries QUIC end to end
// (udpchan.go: protocol and server; udpclient.go, udpchannel.go: client). It depends on
// the standard library, go-spiffe's ID types (through identity),
// internal/proxy and VictoriaMetrics/metrics only.
//
// Connections. Every TCP connection to the relay is mutual TLS 1.3 with
// node certificates from the mesh CA. ALPN tells the two kinds apart:
//
//	fogmesh-relay/1       control: one per agent, long-lived; frames both ways
//	fogmesh-relay-data/1  data: one per relayed session; one frame each way
//	                      (Dial or Accept, then Ready), then raw bytes
//
// Frame layout (both kinds of connection, before any raw bytes):
//
//	+--------+----------------------+------------------+
//	| type 1 | length 4 (big end.)  | payload (JSON)   |
//	+--------+----------------------+------------------+
//
// length counts the payload only and is at most MaxFrameSize. A frame that
// is larger, truncated, of an unknown type or whose payload is not the
// type's JSON object closes the connection (counted by reason).
package relay

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
)

// ALPN protocol names of the relay's two kinds of connection.
const (
	ALPNControl = "fogmesh-relay/1"
	ALPNData    = "fogmesh-relay-data/1"
)

// MaxFrameSize is the largest payload a frame may carry, either way.
const MaxFrameSize = 16 << 10

// headerSize is the type byte and the 4-byte length.
const headerSize = 5

// Frame types.
const (
	// TypeHello, relay → agent, first frame on a control connection.
	TypeHello byte = 1
	// TypeCandidates, agent → relay: the agent's own candidate addresses,
	// given to the peers it is introduced to.
	TypeCandidates byte = 2
	// TypeIntroduce, agent → relay: introduce me to Peer.
	TypeIntroduce byte = 3
	// TypeIntroduced, relay → agent: Peer wants to talk (or answered);
	// here are its candidates.
	TypeIntroduced byte = 4
	// TypeError, relay → agent: a request was refused.
	TypeError byte = 5
	// TypeDial, agent → relay on a data connection: relay me to Peer.
	TypeDial byte = 6
	// TypeIncoming, relay → agent on the control connection: Peer dialed
	// you through the relay; open a data connection and Accept Session.
	TypeIncoming byte = 7
	// TypeAccept, agent → relay on a data connection: I take Session.
	TypeAccept byte = 8
	// TypeReady, relay → agent on a data connection: both sides are here;
	// raw bytes follow.
	TypeReady byte = 9
	// TypePing, agent → relay: a keepalive (the relay drops control
	// connections silent for Config.ControlTimeout) and an RTT probe.
	TypePing byte = 10
	// TypePong, relay → agent: the answer to Ping, with its ID.
	TypePong byte = 11
	// TypeUDPBind, agent → relay: open a UDP channel to Peer (udpchan.go).
	TypeUDPBind byte = 12
	// TypeUDPBound, relay → agent: a UDP channel is open; to the binder
	// under its Nonce, to the peer with no Nonce (an incoming channel).
	TypeUDPBound byte = 13
	// TypeUDPClose, either way: the channel is closed (by its agent, the
	// other agent, or the relay: idle, control connection gone).
	TypeUDPClose byte = 14
)

// Limits of message contents.
const (
	MaxCandidates   = 16
	maxCandidateLen = 64
	nonceLen        = 32 // hex characters: 16 random bytes
	sessionIDLen    = 32
	channelIDLen    = 2 * udpChanIDLen
	channelKeyLen   = 2 * udpKeyLen
	maxReasonLen    = 64
)

// Frame reasons: the reason label of refusals caused by a bad frame.
const (
	ReasonFrameTooLarge = "frame_too_large"
	ReasonFrameTrunc    = "frame_truncated"
	ReasonFrameType     = "frame_unknown_type"
	ReasonFrameBad      = "frame_malformed"
)

// FrameError is a frame that cannot be accepted; Reason is one of the
// Reason* constants above.
type FrameError struct {
	Reason string
	Err    error
}

func (e *FrameError) Error() string { return "relay frame: " + e.Reason + ": " + e.Err.Error() }
func (e *FrameError) Unwrap() error { return e.Err }

// Frame is one decoded frame: its type and raw JSON payload.
type Frame struct {
	Type    byte
	Payload []byte
}

// ReadFrame reads one frame from r. A clean EOF before the first byte
// returns io.EOF; anything else wrong is a *FrameError (or the read error).
// It allocates at most MaxFrameSize bytes, and only after the header said
// the frame fits.
func ReadFrame(r io.Reader) (Frame, error) {
	var h [headerSize]byte
	if _, err := io.ReadFull(r, h[:1]); err != nil {
		return Frame{}, err // io.EOF: the peer closed between frames
	}
	if _, err := io.ReadFull(r, h[1:]); err != nil {
		return Frame{}, truncated(err)
	}
	n := binary.BigEndian.Uint32(h[1:])
	if n > MaxFrameSize {
		return Frame{}, &FrameError{Reason: ReasonFrameTooLarge, Err: fmt.Errorf("%d bytes, limit %d", n, MaxFrameSize)}
	}
	if !knownType(h[0]) {
		return Frame{}, &FrameError{Reason: ReasonFrameType, Err: fmt.Errorf("type %d", h[0])}
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		return Frame{}, truncated(err)
	}
	return Frame{Type: h[0], Payload: p}, nil
}

func truncated(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return &FrameError{Reason: ReasonFrameTrunc, Err: io.ErrUnexpectedEOF}
	}
	return err
}

func knownType(t byte) bool { return t >= TypeHello && t <= TypeUDPClose }

// AppendFrame appends the frame of type t carrying msg (JSON) to b.
func AppendFrame(b []byte, t byte, msg any) ([]byte, error) {
	p, err := json.Marshal(msg)
	if err != nil {
		return b, fmt.Errorf("relay frame: %w", err)
	}
	if len(p) > MaxFrameSize {
		return b, &FrameError{Reason: ReasonFrameTooLarge, Err: fmt.Errorf("%d bytes, limit %d", len(p), MaxFrameSize)}
	}
	b = append(b, t, 0, 0, 0, 0)
	binary.BigEndian.PutUint32(b[len(b)-4:], uint32(len(p)))
	return append(b, p...), nil
}

// WriteFrame writes one frame to w in a single Write.
func WriteFrame(w io.Writer, t byte, msg any) error {
	b, err := AppendFrame(nil, t, msg)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// Decode decodes the frame's payload into v, which must be the message
// type of f.Type, and checks it. Unknown fields are allowed (newer peers).
func (f Frame) Decode(v message) error {
	if v.frameType() != f.Type {
		return &FrameError{Reason: ReasonFrameBad, Err: fmt.Errorf("type %d is not a %T", f.Type, v)}
	}
	dec := json.NewDecoder(bytes.NewReader(f.Payload))
	if err := dec.Decode(v); err != nil {
		return &FrameError{Reason: ReasonFrameBad, Err: fmt.Errorf("%T: %w", v, err)}
	}
	if dec.More() {
		return &FrameError{Reason: ReasonFrameBad, Err: fmt.Errorf("%T: trailing data", v)}
	}
	if err := v.check(); err != nil {
		return &FrameError{Reason: ReasonFrameBad, Err: fmt.Errorf("%T: %w", v, err)}
	}
	return nil
}

// message is implemented by every frame's payload type.
type message interface {
	frameType() byte
	check() error
}

// Hello is the relay's first frame on a control connection.
type Hello struct {
	// Node is the agent's SPIFFE ID as the relay authenticated it.
	Node string `json:"node"`
	// Observed is the agent's address as the relay sees the control
	// connection come in: its public (server-reflexive) TCP address.
	Observed string `json:"observed"`
	// UDPToken authorises UDP reflexive requests (see udp.go) for as long
	// as this control connection lasts; empty when the relay has no UDP.
	UDPToken string `json:"udpToken,omitempty"`
}

// Candidates are the agent's own addresses (host:port), most preferred
// first; the relay adds the reflexive addresses it observed.
type Candidates struct {
	Candidates []string `json:"candidates"`
}

// Introduce asks the relay to introduce the agent to Peer (a node SPIFFE
// ID). Nonce is 16 random bytes in hex, never reused; Time is the agent's
// clock (Unix ms): the relay refuses a nonce it has seen and a Time outside
// its replay window, so a recorded Introduce cannot be replayed later.
type Introduce struct {
	Nonce      string   `json:"nonce"`
	Time       int64    `json:"time"`
	Peer       string   `json:"peer"`
	Candidates []string `json:"candidates,omitempty"`
}

// Introduced tells an agent Peer's candidates, under the Nonce of the
// Introduce that caused it (both sides get the same nonce, so either can
// refuse a replay of its own).
type Introduced struct {
	Nonce      string   `json:"nonce"`
	Peer       string   `json:"peer"`
	Candidates []string `json:"candidates"`
}

// Error is a refused request; Nonce or Session names it.
type Error struct {
	Nonce   string `json:"nonce,omitempty"`
	Session string `json:"session,omitempty"`
	Reason  string `json:"reason"`
	Message string `json:"message,omitempty"`
}

func (e *Error) Error() string { return "relay refused (" + e.Reason + "): " + e.Message }

// Dial opens a relayed session to Peer on a data connection.
type Dial struct {
	Peer string `json:"peer"`
}

// Incoming tells an agent that Peer dialed it through the relay.
type Incoming struct {
	Session string `json:"session"`
	Peer    string `json:"peer"`
}

// Accept takes Session on a data connection.
type Accept struct {
	Session string `json:"session"`
}

// Ready says both ends of Session are connected; raw bytes follow.
type Ready struct {
	Session string `json:"session"`
	Peer    string `json:"peer"`
}

// Ping is a keepalive and RTT probe; Pong echoes its ID.
type Ping struct {
	ID string `json:"id"`
}

// Pong answers the Ping with the same ID.
type Pong struct {
	ID string `json:"id"`
}

// UDPBind asks for a UDP channel to Peer (a node SPIFFE ID); Nonce (16
// random bytes in hex) names the request in the answer, a UDPBound or an
// Error.
type UDPBind struct {
	Nonce string `json:"nonce"`
	Peer  string `json:"peer"`
}

// UDPBound is an open UDP channel. Both agents get the same Channel and
// Port; each gets its own Side and Key, so neither can forge the other's
// datagrams.
type UDPBound struct {
	// Nonce is the UDPBind's for the binder, empty for the peer.
	Nonce string `json:"nonce,omitempty"`
	// Channel is the channel ID (udpChanIDLen bytes in hex).
	Channel string `json:"channel"`
	// Peer is the other agent's SPIFFE ID.
	Peer string `json:"peer"`
	// Side is 0 for the binder, 1 for the peer.
	Side int `json:"side"`
	// Key is this side's tag key (udpKeyLen bytes in hex): only the relay
	// and this agent know it.
	Key string `json:"key"`
	// Port is the relay's UDP port on the relay's host.
	Port int `json:"port"`
}

// UDPClose says a UDP channel is closed.
type UDPClose struct {
	Channel string `json:"channel"`
	Reason  string `json:"reason,omitempty"`
}

func (*UDPBind) frameType() byte  { return TypeUDPBind }
func (*UDPBound) frameType() byte { return TypeUDPBound }
func (*UDPClose) frameType() byte { return TypeUDPClose }

func (m *UDPBind) check() error {
	if err := checkHex(m.Nonce, nonceLen, "nonce"); err != nil {
		return err
	}
	if m.Peer == "" {
		return errors.New("no peer")
	}
	return nil
}

func (m *UDPBound) check() error {
	if m.Nonce != "" {
		if err := checkHex(m.Nonce, nonceLen, "nonce"); err != nil {
			return err
		}
	}
	if err := checkHex(m.Channel, channelIDLen, "channel"); err != nil {
		return err
	}
	if err := checkHex(m.Key, channelKeyLen, "key"); err != nil {
		return err
	}
	if m.Side != 0 && m.Side != 1 {
		return fmt.Errorf("side %d, want 0 or 1", m.Side)
	}
	if m.Port <= 0 || m.Port > 65535 {
		return fmt.Errorf("port %d out of range", m.Port)
	}
	if m.Peer == "" {
		return errors.New("no peer")
	}
	return nil
}

func (m *UDPClose) check() error {
	if len(m.Reason) > maxReasonLen {
		return fmt.Errorf("reason of %d bytes, limit %d", len(m.Reason), maxReasonLen)
	}
	return checkHex(m.Channel, channelIDLen, "channel")
}

func (*Ping) frameType() byte       { return TypePing }
func (*Pong) frameType() byte       { return TypePong }
func (*Hello) frameType() byte      { return TypeHello }
func (*Candidates) frameType() byte { return TypeCandidates }
func (*Introduce) frameType() byte  { return TypeIntroduce }
func (*Introduced) frameType() byte { return TypeIntroduced }
func (*Error) frameType() byte      { return TypeError }
func (*Dial) frameType() byte       { return TypeDial }
func (*Incoming) frameType() byte   { return TypeIncoming }
func (*Accept) frameType() byte     { return TypeAccept }
func (*Ready) frameType() byte      { return TypeReady }

func (m *Ping) check() error  { return checkHex(m.ID, nonceLen, "id") }
func (m *Pong) check() error  { return checkHex(m.ID, nonceLen, "id") }
func (m *Hello) check() error { return nil }
func (m *Candidates) check() error {
	return checkCandidates(m.Candidates)
}
func (m *Introduce) check() error {
	if err := checkHex(m.Nonce, nonceLen, "nonce"); err != nil {
		return err
	}
	if m.Peer == "" {
		return errors.New("no peer")
	}
	return checkCandidates(m.Candidates)
}
func (m *Introduced) check() error {
	if err := checkHex(m.Nonce, nonceLen, "nonce"); err != nil {
		return err
	}
	return checkCandidates(m.Candidates)
}
func (m *Error) check() error {
	if m.Reason == "" {
		return errors.New("no reason")
	}
	return nil
}
func (m *Dial) check() error {
	if m.Peer == "" {
		return errors.New("no peer")
	}
	return nil
}
func (m *Incoming) check() error { return checkHex(m.Session, sessionIDLen, "session") }
func (m *Accept) check() error   { return checkHex(m.Session, sessionIDLen, "session") }
func (m *Ready) check() error    { return checkHex(m.Session, sessionIDLen, "session") }

func checkCandidates(cs []string) error {
	if len(cs) > MaxCandidates {
		return fmt.Errorf("%d candidates, limit %d", len(cs), MaxCandidates)
	}
	for _, c := range cs {
		if len(c) > maxCandidateLen {
			return fmt.Errorf("candidate %.20q... too long", c)
		}
		if _, err := netip.ParseAddrPort(c); err != nil {
			return fmt.Errorf("candidate %q: %w", c, err)
		}
	}
	return nil
}

func checkHex(s string, n int, what string) error {
	if len(s) != n || strings.Trim(s, "0123456789abcdef") != "" {
		return fmt.Errorf("%s: want %d lower-case hex characters", what, n)
	}
	return nil
}
