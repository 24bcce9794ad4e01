// Package mqtt reads the client side of an MQTT connection (MQTT 3.1,
// 3.1.1 and 5) so the agent can pin a client id to one broker instance and
// authorize every topic a client can cause to be published or subscribed:
// the CONNECT's will topic, PUBLISH topics (MQTT 5 topic aliases resolved)
// and SUBSCRIBE filters. It frames packets without reading past them, so
// that a connection can still be spliced by the kernel, and writes the
// CONNACK and DISCONNECT packets that refuse a client.
//
// The decoder is written here, strictly after the specifications (a
// packet it accepts is well-formed to its last byte), and kept out of any
// library so the agent binary stays small. FuzzDifferential checks it
// against mochi-mqtt's packet codec (a test-only dependency): it never
// accepts what that codec rejects, and it reads the same packet type,
// length, protocol level, client id, will topic, topics and filters.
package mqtt

// Over 500 lines: the MQTT 3.1/3.1.1/5 packet grammar in one place (fixed header, properties, each packet type share the readers).

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// Control packet types (MQTT 3.1.1 §2.2.1, MQTT 5 §2.1.2).
const (
	TypeConnect     = 1
	TypeConnack     = 2
	TypePublish     = 3
	TypePuback      = 4
	TypePubrec      = 5
	TypePubrel      = 6
	TypePubcomp     = 7
	TypeSubscribe   = 8
	TypeSuback      = 9
	TypeUnsubscribe = 10
	TypeUnsuback    = 11
	TypePingreq     = 12
	TypePingresp    = 13
	TypeDisconnect  = 14
	TypeAuth        = 15 // MQTT 5 only
)

// MaxConnectSize bounds the CONNECT packet the agent will read (will
// payloads and v5 properties included).
const MaxConnectSize = 64 << 10

// MaxPacketSize bounds the packets the agent reads in inspecting mode.
const MaxPacketSize = 16 << 20

// Header is a packet's fixed header.
type Header struct {
	Type      byte // TypeConnect...
	Flags     byte // the low four bits of the first byte
	Remaining int  // the length of the packet after the fixed header
}

// QoS is a PUBLISH packet's quality of service.
func (h Header) QoS() byte { return h.Flags >> 1 & 3 }

// ErrMalformed is wrapped by every error about a packet's bytes (MQTT 5
// reason 0x81); a *ProtocolError may wrap it too.
var ErrMalformed = errors.New("malformed packet")

// ProtocolError is a well-framed packet that breaks a rule of the
// protocol. Reason is the MQTT 5 reason code a DISCONNECT carries for it
// (0x81 malformed, 0x82 protocol error, 0x94 topic alias invalid, 0x97
// quota exceeded).
type ProtocolError struct {
	Reason byte
	Err    error
}

func (e *ProtocolError) Error() string { return e.Err.Error() }
func (e *ProtocolError) Unwrap() error { return e.Err }

func malformed(format string, args ...any) error {
	return &ProtocolError{Reason: 0x81, Err: fmt.Errorf("mqtt: %s: %w", fmt.Sprintf(format, args...), ErrMalformed)}
}

func protocolErr(reason byte, format string, args ...any) error {
	return &ProtocolError{Reason: reason, Err: fmt.Errorf("mqtt: "+format, args...)}
}

// DisconnectReason is the MQTT 5 DISCONNECT reason code for an error of
// this package (0x81 when the error does not say).
func DisconnectReason(err error) byte {
	var pe *ProtocolError
	if errors.As(err, &pe) {
		return pe.Reason
	}
	return 0x81
}

// Disconnect returns an MQTT 5 DISCONNECT packet with a reason code.
func Disconnect(reason byte) []byte { return []byte{TypeDisconnect << 4, 1, reason} }

// checkFlags checks the fixed header's flag bits (MQTT 3.1.1 §2.2.2, MQTT
// 5 §2.1.3): fixed for every type but PUBLISH, whose QoS must not be 3
// and whose DUP must be 0 at QoS 0.
func checkFlags(t, flags byte) error {
	switch t {
	case 0:
		return malformed("reserved packet type 0")
	case TypePublish:
		if flags>>1&3 == 3 {
			return malformed("PUBLISH with QoS 3")
		}
		if flags&8 != 0 && flags>>1&3 == 0 {
			return malformed("PUBLISH with DUP at QoS 0")
		}
	case TypePubrel, TypeSubscribe, TypeUnsubscribe:
		if flags != 2 {
			return malformed("packet type %d with flags %#x", t, flags)
		}
	default:
		if flags != 0 {
			return malformed("packet type %d with flags %#x", t, flags)
		}
	}
	return nil
}

// ReadPacket reads exactly one packet (never beyond it) and returns its
// fixed header, its raw bytes (to forward as they are) and its body. It
// returns io.EOF when r ends before the packet's first byte; with any
// other error, raw holds the bytes read.
func ReadPacket(r io.Reader, max int) (Header, []byte, []byte, error) {
	var h Header
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:1]); err != nil {
		return h, nil, nil, err
	}
	h.Type, h.Flags = hdr[0]>>4, hdr[0]&0x0f
	if err := checkFlags(h.Type, h.Flags); err != nil {
		return h, hdr[:1], nil, err
	}
	n, shift, i := 0, 0, 1
	for {
		if i == 5 { // a Variable Byte Integer has at most four bytes
			return h, hdr[:i], nil, malformed("remaining length longer than four bytes")
		}
		if _, err := io.ReadFull(r, hdr[i:i+1]); err != nil {
			return h, hdr[:i], nil, cutShort("read remaining length", err)
		}
		n |= int(hdr[i]&0x7f) << shift
		shift += 7
		i++
		if hdr[i-1]&0x80 == 0 {
			break
		}
	}
	if n > max {
		return h, hdr[:i], nil, protocolErr(0x95, "packet of %d bytes (limit %d)", n, max) // 0x95: packet too large
	}
	h.Remaining = n
	if n > 64<<10 {
		// A large packet's memory grows with the bytes that arrive, not
		// with the length a client declares.
		var buf bytes.Buffer
		buf.Write(hdr[:i])
		if _, err := io.CopyN(&buf, r, int64(n)); err != nil {
			return h, buf.Bytes(), nil, cutShort("read packet", err)
		}
		raw := buf.Bytes()
		return h, raw, raw[i:], nil
	}
	raw := make([]byte, i+n)
	copy(raw, hdr[:i])
	if m, err := io.ReadFull(r, raw[i:]); err != nil {
		return h, raw[:i+m], nil, cutShort("read packet", err)
	}
	return h, raw, raw[i:], nil
}

// cutShort is the error of a packet cut short by err: io.ErrUnexpectedEOF,
// and err itself unless it is the end of the input (a timeout stays one).
func cutShort(what string, err error) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return fmt.Errorf("mqtt: %s: %w", what, io.ErrUnexpectedEOF)
	}
	return fmt.Errorf("mqtt: %s: %w: %w", what, io.ErrUnexpectedEOF, err)
}

// decoder reads the fields of a packet body. The first error sticks; every
// read after it returns zero values.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(err error) {
	if d.err == nil {
		d.err = err
	}
}

func (d *decoder) byte1(what string) byte {
	if d.err != nil {
		return 0
	}
	if len(d.b) < 1 {
		d.fail(malformed("%s: packet ends early", what))
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *decoder) uint16(what string) uint16 {
	if d.err != nil {
		return 0
	}
	if len(d.b) < 2 {
		d.fail(malformed("%s: packet ends early", what))
		return 0
	}
	v := binary.BigEndian.Uint16(d.b)
	d.b = d.b[2:]
	return v
}

func (d *decoder) uint32(what string) uint32 {
	if d.err != nil {
		return 0
	}
	if len(d.b) < 4 {
		d.fail(malformed("%s: packet ends early", what))
		return 0
	}
	v := binary.BigEndian.Uint32(d.b)
	d.b = d.b[4:]
	return v
}

// varint reads a Variable Byte Integer (at most four bytes).
func (d *decoder) varint(what string) int {
	n, shift := 0, 0
	for i := 0; i < 4; i++ {
		c := d.byte1(what)
		if d.err != nil {
			return 0
		}
		n |= int(c&0x7f) << shift
		shift += 7
		if c&0x80 == 0 {
			return n
		}
	}
	d.fail(malformed("%s: variable byte integer longer than four bytes", what))
	return 0
}

// binary reads Binary Data: a two-byte length and that many bytes.
func (d *decoder) binary(what string) []byte {
	n := int(d.uint16(what))
	if d.err != nil {
		return nil
	}
	if len(d.b) < n {
		d.fail(malformed("%s: length %d overruns the packet", what, n))
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

// str reads a UTF-8 Encoded String: well-formed UTF-8 without U+0000
// (MQTT 3.1.1 §1.5.3, MQTT 5 §1.5.4).
func (d *decoder) str(what string) string { return string(d.strBytes(what)) }

// Connect is what the agent uses of a CONNECT packet.
type Connect struct {
	ProtocolName string // "MQTT", or "MQIsdp" for MQTT 3.1
	Version      byte   // 3 (3.1), 4 (3.1.1) or 5
	ClientID     string
	Keepalive    uint16
	CleanStart   bool
	// SessionExpiry is an MQTT 5 CONNECT's Session Expiry Interval in
	// seconds (0 when absent: the session ends with the connection).
	SessionExpiry uint32
	Username      string
	// Will is set when the client asked for a Last Will: WillTopic is the
	// topic the broker publishes to if the connection ends without a
	// DISCONNECT.
	Will       bool
	WillTopic  string
	WillQoS    byte
	WillRetain bool
}

// ErrNotConnect is returned when the first packet is not CONNECT.
var ErrNotConnect = errors.New("mqtt: first packet is not CONNECT")

// ErrProtocolName is returned for a CONNECT whose protocol name is neither
// "MQTT" nor "MQIsdp"; ErrProtocolVersion for a protocol level this
// package does not speak (MQTT 3.1.1 §3.1.2.2: CONNACK 0x01).
var (
	ErrProtocolName    = errors.New("mqtt: unknown protocol name")
	ErrProtocolVersion = errors.New("mqtt: unsupported protocol level")
)

// ConnectError is a CONNECT that cannot be accepted. Version is the
// protocol level the client asked for (0 when the packet did not get that
// far).
type ConnectError struct {
	Version byte
	Err     error
}

func (e *ConnectError) Error() string { return e.Err.Error() }
func (e *ConnectError) Unwrap() error { return e.Err }

// ReadConnect reads exactly one packet from r, which must be CONNECT, and
// returns it parsed together with the raw bytes read (to replay upstream).
// It never reads beyond the packet. Errors are *ConnectError, except
// io.EOF-wrapping ones for a connection closed before its first byte;
// RefuseConnect says how to answer them.
func ReadConnect(r io.Reader) (Connect, []byte, error) {
	h, raw, body, err := ReadPacket(r, MaxConnectSize)
	if err != nil {
		if err == io.EOF {
			err = fmt.Errorf("mqtt: read fixed header: %w", err)
		}
		return Connect{}, raw, &ConnectError{Err: err}
	}
	if h.Type != TypeConnect {
		return Connect{}, raw, &ConnectError{Err: ErrNotConnect}
	}
	c, err := ParseConnect(body)
	return c, raw, err
}

// ParseConnect decodes the body of a CONNECT packet (MQTT 3.1.1 §3.1, MQTT
// 5 §3.1). Errors are *ConnectError.
func ParseConnect(body []byte) (Connect, error) {
	var c Connect
	d := &decoder{b: body}
	name := d.binary("protocol name")
	if d.err != nil {
		return c, &ConnectError{Err: d.err}
	}
	c.Version = d.byte1("protocol level")
	if d.err != nil {
		return c, &ConnectError{Err: d.err}
	}
	switch {
	case string(name) == "MQTT" && (c.Version == 4 || c.Version == 5),
		string(name) == "MQIsdp" && c.Version == 3:
		c.ProtocolName = string(name)
	case string(name) == "MQTT" || string(name) == "MQIsdp":
		return c, &ConnectError{Version: c.Version, Err: fmt.Errorf("%w %d for %q", ErrProtocolVersion, c.Version, name)}
	default:
		return c, &ConnectError{Version: c.Version, Err: fmt.Errorf("%w %q", ErrProtocolName, name)}
	}
	fail := func(err error) (Connect, error) { return Connect{}, &ConnectError{Version: c.Version, Err: err} }
	flags := d.byte1("connect flags")
	c.Keepalive = d.uint16("keep alive")
	if d.err != nil {
		return fail(d.err)
	}
	if flags&1 != 0 {
		return fail(malformed("CONNECT reserved flag set")) // [MQTT-3.1.2-3]
	}
	c.CleanStart = flags&2 != 0
	c.Will = flags&4 != 0
	c.WillQoS = flags >> 3 & 3
	c.WillRetain = flags&0x20 != 0
	password, username := flags&0x40 != 0, flags&0x80 != 0
	if c.WillQoS == 3 {
		return fail(malformed("will QoS 3")) // [MQTT-3.1.2-14]
	}
	if !c.Will && (c.WillQoS != 0 || c.WillRetain) {
		return fail(malformed("will QoS or retain without a will")) // [MQTT-3.1.2-11] [MQTT-3.1.2-13]
	}
	if password && !username && c.Version < 5 {
		return fail(malformed("password without user name")) // [MQTT-3.1.2-22]
	}
	if c.Version == 5 {
		d.properties("CONNECT", connectProps, func(id byte, v uint32) {
			if id == 0x11 {
				c.SessionExpiry = v
			}
			if v == 0 && (id == 0x21 || id == 0x27) { // receive maximum, maximum packet size
				d.fail(protocolErr(0x82, "CONNECT property %#x is 0", id)) // MQTT 5 §3.1.2.11.3, §3.1.2.11.4
			}
		})
	}
	c.ClientID = d.str("client identifier")
	if c.Will {
		if c.Version == 5 {
			d.properties("will", willProps, nil)
		}
		c.WillTopic = d.str("will topic")
		d.binary("will payload")
		if d.err == nil {
			if err := ValidTopicName(c.WillTopic); err != nil {
				return fail(malformed("will topic: %v", err))
			}
		}
	}
	if username {
		c.Username = d.str("user name")
	}
	if password {
		d.binary("password")
	}
	if d.err == nil && len(d.b) > 0 {
		d.fail(malformed("%d bytes after the CONNECT payload", len(d.b)))
	}
	if d.err != nil {
		return fail(d.err)
	}
	return c, nil
}

// Refusal reasons for Connack.
const (
	RefuseUnavailable   = iota // no broker instance is reachable
	RefuseNotAuthorized        // the will topic is not authorized
)

// Connack returns a CONNACK refusing the connection, in the client's
// protocol version (3.1.1 return codes, or MQTT 5 reason codes).
func Connack(version byte, why int) []byte {
	if version == 5 {
		code := byte(0x88) // server unavailable
		if why == RefuseNotAuthorized {
			code = 0x87 // not authorized
		}
		return []byte{0x20, 3, 0, code, 0} // flags, reason, no properties
	}
	code := byte(0x03) // server unavailable
	if why == RefuseNotAuthorized {
		code = 0x05 // not authorized
	}
	return []byte{0x20, 2, 0, code}
}

// ServerKeepAlive reads the Server Keep Alive of an MQTT 5 CONNACK's body
// (MQTT 5 §3.2.2.3.14): the keep alive, in seconds, that the client must
// use instead of the one it asked for. ok is false when the CONNACK has
// none, or its properties cannot be read.
func ServerKeepAlive(body []byte) (secs uint16, ok bool) {
	if len(body) < 2 {
		return 0, false
	}
	d := &decoder{b: body[2:]} // acknowledge flags, reason code
	d.properties("CONNACK", connackProps, func(id byte, v uint32) {
		if id == 0x13 {
			secs, ok = uint16(v), true
		}
	})
	if d.err != nil {
		return 0, false
	}
	return secs, ok
}

// KeepAliveLimit is how long a server lets a client with a keep alive of
// secs seconds stay silent before it closes the connection: one and a
// half times the keep alive (MQTT 3.1.1 §3.1.2.10, MQTT 5 §3.1.2.10); 0
// (keep alive 0): no limit.
func KeepAliveLimit(secs uint16) time.Duration {
	return time.Duration(secs) * 1500 * time.Millisecond
}

// RefuseConnect returns what to answer a client whose CONNECT ReadConnect
// refused, before closing the connection (nil: close without a word). It
// follows MQTT 3.1.1 and 5 and, where they leave a choice, mosquitto:
//
//   - an unknown protocol name or level: the 3.1.1 CONNACK 0x01
//     "unacceptable protocol version" (3.1.1 §3.1.2.2 for the level; MQTT
//     5 §3.1.2.1 allows a CONNACK for a wrong name; mosquitto answers the
//     level so, and closes silently on a wrong name, which cannot tell a
//     client why);
//   - a malformed MQTT 5 CONNECT: CONNACK 0x81 (malformed) or 0x82
//     (protocol error), MQTT 5 §4.13;
//   - a malformed MQTT 3.1/3.1.1 CONNECT, or not a CONNECT: nothing (3.1.1
//     §4.8 has no return code for it and says to close, as mosquitto
//     does).
func RefuseConnect(err error) []byte {
	if errors.Is(err, ErrProtocolName) || errors.Is(err, ErrProtocolVersion) {
		return []byte{0x20, 2, 0, 0x01}
	}
	var ce *ConnectError
	if errors.As(err, &ce) && ce.Version == 5 {
		return []byte{0x20, 3, 0, DisconnectReason(err), 0}
	}
	return nil
}

// ValidTopicName checks a topic a client publishes to (MQTT 3.1.1 §4.7.3,
// MQTT 5 §4.7.3): at least one character, no wildcard.
func ValidTopicName(t string) error {
	if t == "" {
		return errors.New("empty topic name")
	}
	if strings.ContainsAny(t, "+#") {
		return fmt.Errorf("wildcard in topic name %q", t)
	}
	return nil
}

// ValidTopicFilter checks a subscription filter (MQTT 3.1.1 §4.7.1, MQTT 5
// §4.7.1 and §4.8.2 for shared subscriptions).
func ValidTopicFilter(f string) error {
	if f == "" {
		return errors.New("empty topic filter")
	}
	if strings.HasPrefix(f, "$share/") {
		group, rest, ok := strings.Cut(f[len("$share/"):], "/")
		if !ok || group == "" || strings.ContainsAny(group, "+#") || rest == "" {
			return fmt.Errorf("shared subscription %q is not $share/{group}/{filter}", f)
		}
		f = rest
	}
	levels := strings.Split(f, "/")
	for i, l := range levels {
		switch {
		case l == "#" && i != len(levels)-1:
			return fmt.Errorf("'#' not last in topic filter %q", f)
		case l != "#" && l != "+" && strings.ContainsAny(l, "+#"):
			return fmt.Errorf("wildcard inside a level of topic filter %q", f)
		}
	}
	return nil
}

// SubscribedFilter is the filter a broker matches messages against for a
// SUBSCRIBE filter: a shared subscription $share/{group}/{filter} receives
// what {filter} does (MQTT 5 §4.8.2; mosquitto also honours it on 3.1.1),
// so that is the filter to authorize.
func SubscribedFilter(f string) string {
	if strings.HasPrefix(f, "$share/") {
		if _, rest, ok := strings.Cut(f[len("$share/"):], "/"); ok {
			return rest
		}
	}
	return f
}

// emqxSubscribePrefixes are EMQX's subscription prefixes that receive what
// the filter after them does: its shared subscription without a group
// ($queue/{filter}) and its exclusive subscription ($exclusive/{filter}).
// A broker that knows neither takes them as ordinary filters (of topics
// starting with '$', which only a literal publish reaches).
var emqxSubscribePrefixes = []string{"$queue/", "$exclusive/"}

// SubscribedForms are the filters to authorize for a SUBSCRIBE filter f:
// what the broker matches messages against (SubscribedFilter), and, for
// an EMQX prefix, both the filter after it (what EMQX delivers) and the
// filter as sent (what another broker matches), so that a DENY of either
// denies it and an ALLOW must allow both (allowing alerts/# does not
// allow $queue/alerts/#).
func SubscribedForms(f string) []string {
	f = SubscribedFilter(f)
	for _, p := range emqxSubscribePrefixes {
		if rest, ok := strings.CutPrefix(f, p); ok && rest != "" {
			return []string{rest, f}
		}
	}
	return []string{f}
}

// PublishedForms are the topics to authorize for a PUBLISH (or will) to
// t: for EMQX's delayed publish $delayed/{seconds}/{topic}, {topic}, where
// EMQX delivers it later, first; every form with fewer $delayed/ levels
// (EMQX publishes the message again, so a nested one is delayed again and
// then delivered); and t as sent, last. A DENY of any denies it; an ALLOW
// must allow all.
func PublishedForms(t string) []string {
	forms := []string{t}
	for d := t; ; {
		rest, ok := strings.CutPrefix(d, "$delayed/")
		if !ok {
			break
		}
		_, topic, ok := strings.Cut(rest, "/")
		if !ok || topic == "" {
			break
		}
		d = topic
		forms = append(forms, d)
	}
	slices.Reverse(forms)
	return forms
}
