package mqtt

import (
	"bytes"
	"fmt"
	"strings"
	"unicode/utf8"
)

// MQTT 5 properties (§2.2.2.2): identifier, the type of its value and the
// packets it may appear in.
const (
	propByte = iota
	propUint16
	propUint32
	propVarint
	propString
	propBinary
	propPair
)

var propType = map[byte]uint8{
	0x01: propByte,   // payload format indicator
	0x02: propUint32, // message expiry interval
	0x03: propString, // content type
	0x08: propString, // response topic
	0x09: propBinary, // correlation data
	0x0b: propVarint, // subscription identifier
	0x11: propUint32, // session expiry interval
	0x12: propString, // assigned client identifier (CONNACK)
	0x13: propUint16, // server keep alive (CONNACK)
	0x15: propString, // authentication method
	0x16: propBinary, // authentication data
	0x17: propByte,   // request problem information
	0x18: propUint32, // will delay interval
	0x19: propByte,   // request response information
	0x1a: propString, // response information (CONNACK)
	0x1c: propString, // server reference (CONNACK, a server's DISCONNECT)
	0x1f: propString, // reason string
	0x21: propUint16, // receive maximum
	0x22: propUint16, // topic alias maximum
	0x23: propUint16, // topic alias
	0x24: propByte,   // maximum QoS (CONNACK)
	0x25: propByte,   // retain available (CONNACK)
	0x26: propPair,   // user property
	0x27: propUint32, // maximum packet size
	0x28: propByte,   // wildcard subscription available (CONNACK)
	0x29: propByte,   // subscription identifiers available (CONNACK)
	0x2a: propByte,   // shared subscription available (CONNACK)
}

// connackProps are the properties a broker's CONNACK may carry.
var connackProps = []byte{0x11, 0x12, 0x13, 0x15, 0x16, 0x1a, 0x1c, 0x1f, 0x21, 0x22, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a}

// Properties a client may send, per packet.
var (
	connectProps   = []byte{0x11, 0x15, 0x16, 0x17, 0x19, 0x21, 0x22, 0x26, 0x27}
	willProps      = []byte{0x01, 0x02, 0x03, 0x08, 0x09, 0x18, 0x26}
	publishProps   = []byte{0x01, 0x02, 0x03, 0x08, 0x09, 0x23, 0x26} // 0x0b only server to client [MQTT-3.3.4-6]
	subscribeProps = []byte{0x0b, 0x26}
	// A client's DISCONNECT: session expiry, reason string, user property
	// (server reference 0x1c only from a server).
	disconnectProps = []byte{0x11, 0x1f, 0x26}
)

// disconnectReasons are the reason codes MQTT 5 §3.14.2.1 defines for
// DISCONNECT.
var disconnectReasons = func() (m [256]bool) {
	for _, c := range []byte{0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8b, 0x8d, 0x8e, 0x8f, 0x90,
		0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0x9b, 0x9c, 0x9d, 0x9e, 0x9f, 0xa0, 0xa1, 0xa2} {
		m[c] = true
	}
	return m
}()

// strBytes reads a UTF-8 Encoded String as str does, without copying it
// (properties are checked, not kept).
func (d *decoder) strBytes(what string) []byte {
	b := d.binary(what)
	if d.err != nil {
		return nil
	}
	if !utf8.Valid(b) || bytes.IndexByte(b, 0) >= 0 {
		d.fail(malformed("%s: not a valid UTF-8 string", what))
		return nil
	}
	return b
}

// properties reads an MQTT 5 property list, which must hold only the
// allowed properties, each at most once (user properties excepted), and
// end exactly at its declared length. seen, when not nil, gets each
// property's numeric value.
func (d *decoder) properties(what string, allowed []byte, seen func(id byte, v uint32)) {
	n := d.varint(what + " properties length")
	if d.err != nil {
		return
	}
	if n > len(d.b) {
		d.fail(malformed("%s properties: length %d overruns the packet", what, n))
		return
	}
	p := &decoder{b: d.b[:n]}
	d.b = d.b[n:]
	var once [256]bool
	prop, user := what+" property", what+" user property" // once: a packet may hold millions
	for len(p.b) > 0 && p.err == nil {
		id := p.byte1(prop)
		ok := false
		for _, a := range allowed {
			ok = ok || a == id
		}
		if !ok {
			d.fail(protocolErr(0x82, "%s: property %#x not allowed", what, id))
			return
		}
		if id != 0x26 {
			if once[id] {
				d.fail(protocolErr(0x82, "%s: property %#x twice", what, id))
				return
			}
			once[id] = true
		}
		var v uint32
		switch propType[id] {
		case propByte:
			v = uint32(p.byte1(prop))
			if v > 1 { // every byte property a client sends is 0 or 1
				d.fail(protocolErr(0x82, "%s: property %#x = %d", what, id, v))
				return
			}
		case propUint16:
			v = uint32(p.uint16(prop))
		case propUint32:
			v = p.uint32(prop)
		case propVarint:
			v = uint32(p.varint(prop))
		case propString:
			p.strBytes(prop)
		case propBinary:
			p.binary(prop)
		case propPair:
			p.strBytes(user)
			p.strBytes(user)
		}
		if p.err == nil && seen != nil {
			seen(id, v)
		}
	}
	d.fail(p.err)
}

// Publish is what the agent uses of a PUBLISH packet.
type Publish struct {
	Topic    string // "" when an MQTT 5 topic alias stands for it
	Alias    uint16 // MQTT 5 topic alias, 0 if none
	QoS      byte
	PacketID uint16
}

// ParsePublish decodes the body of a PUBLISH packet (MQTT 3.1.1 §3.3,
// MQTT 5 §3.3) of a connection at protocol level version.
func ParsePublish(h Header, body []byte, version byte) (Publish, error) {
	p := Publish{QoS: h.QoS()}
	d := &decoder{b: body}
	p.Topic = d.str("topic name")
	if p.QoS > 0 {
		p.PacketID = d.uint16("packet identifier")
		if d.err == nil && p.PacketID == 0 {
			return p, malformed("PUBLISH with packet identifier 0") // [MQTT-2.2.1-3]
		}
	}
	aliasSet := false
	if version == 5 {
		d.properties("PUBLISH", publishProps, func(id byte, v uint32) {
			if id == 0x23 {
				p.Alias, aliasSet = uint16(v), true
			}
		})
	}
	if d.err != nil {
		return p, d.err
	}
	if aliasSet && p.Alias == 0 {
		return p, protocolErr(0x94, "topic alias 0") // [MQTT-3.3.2-8]
	}
	if p.Topic == "" && p.Alias == 0 {
		return p, protocolErr(0x82, "PUBLISH without a topic")
	}
	if p.Topic != "" {
		if err := ValidTopicName(p.Topic); err != nil {
			return p, protocolErr(0x82, "PUBLISH: %v", err) // [MQTT-3.3.2-2]
		}
	}
	return p, nil
}

// Filter is one topic filter of a SUBSCRIBE with its options byte.
type Filter struct {
	Filter  string
	Options byte // QoS in bits 0-1; MQTT 5 no local, retain as published, retain handling
}

// Subscribe is what the agent uses of a SUBSCRIBE packet.
type Subscribe struct {
	PacketID uint16
	Filters  []Filter
}

// MaxSubscribeFilters bounds the topic filters of one SUBSCRIBE. MQTT sets
// no bound, but each filter is decoded, authorized and counted: a 16 MiB
// SUBSCRIBE of one-byte filters (four million) would cost over a gigabyte
// of allocations and as many decisions, for one packet. Clients that
// subscribe to more send several SUBSCRIBE packets.
const MaxSubscribeFilters = 4096

// ParseSubscribe decodes the body of a SUBSCRIBE packet (MQTT 3.1.1 §3.8,
// MQTT 5 §3.8) of a connection at protocol level version. More than
// MaxSubscribeFilters filters is a *ProtocolError with reason 0x97 (quota
// exceeded), returned before the rest is decoded.
func ParseSubscribe(body []byte, version byte) (Subscribe, error) {
	var s Subscribe
	d := &decoder{b: body}
	s.PacketID = d.uint16("packet identifier")
	if d.err == nil && s.PacketID == 0 {
		return s, malformed("SUBSCRIBE with packet identifier 0")
	}
	if version == 5 {
		d.properties("SUBSCRIBE", subscribeProps, func(id byte, v uint32) {
			if id == 0x0b && v == 0 {
				d.fail(protocolErr(0x82, "subscription identifier 0"))
			}
		})
	}
	for d.err == nil && len(d.b) > 0 {
		if len(s.Filters) == MaxSubscribeFilters {
			return s, protocolErr(0x97, "SUBSCRIBE with more than %d topic filters", MaxSubscribeFilters)
		}
		f := Filter{Filter: d.str("topic filter"), Options: d.byte1("subscription options")}
		if d.err != nil {
			break
		}
		if err := ValidTopicFilter(f.Filter); err != nil {
			return s, malformed("SUBSCRIBE: %v", err)
		}
		switch {
		case f.Options&3 == 3:
			return s, malformed("SUBSCRIBE: QoS 3")
		case version < 5 && f.Options&^3 != 0:
			return s, malformed("SUBSCRIBE: reserved bits set") // [MQTT-3-8.3-4]
		case version == 5 && f.Options&0xc0 != 0:
			return s, malformed("SUBSCRIBE: reserved bits set") // [MQTT-3.8.3-5]
		case version == 5 && f.Options>>4&3 == 3:
			return s, protocolErr(0x82, "SUBSCRIBE: retain handling 3")
		case version == 5 && f.Options&4 != 0 && strings.HasPrefix(f.Filter, "$share/"):
			return s, protocolErr(0x82, "SUBSCRIBE: no local on a shared subscription") // [MQTT-3.8.3-4]
		}
		s.Filters = append(s.Filters, f)
	}
	if d.err != nil {
		return s, d.err
	}
	if len(s.Filters) == 0 {
		return s, protocolErr(0x82, "SUBSCRIBE without a filter") // [MQTT-3.8.3-3]
	}
	return s, nil
}

// Kinds of packets Session.Inspect reports.
const (
	KindOther      = iota // nothing to authorize
	KindPublish           // Topics holds the PUBLISH's topic (an alias resolved) to authorize, delivered one first (PublishedForms)
	KindSubscribe         // Topics holds the filters to authorize (SubscribedForms)
	KindDisconnect        // the client ends the connection; WillAsked reports a v5 "disconnect with will"
	KindRelease           // a PUBREL: Topics holds the topic of the QoS 2 PUBLISH it releases (the broker may deliver it only now)
	// KindUnknownRelease is a PUBREL for a QoS 2 PUBLISH the session has
	// no topic of: sent on an earlier connection that was not Resumed, or
	// whose topic was dropped (Releases' bounds). PacketID is its id.
	KindUnknownRelease
)

// Action is what a client packet asks of the broker.
type Action struct {
	Kind   int
	Topics []string
	// Filters are the SUBSCRIBE filters as sent (for counting).
	Filters []string
	// WillAsked: an MQTT 5 DISCONNECT with reason 0x04, which makes the
	// broker publish the will.
	WillAsked bool
	// PacketID is a PUBREL's packet identifier.
	PacketID uint16
}

// maxAliasBytes bounds the topics a connection's topic aliases hold (the
// broker's Topic Alias Maximum bounds their number, but this package does
// not read the broker's CONNACK).
const maxAliasBytes = 1 << 20

// Session follows the client side of one connection after its CONNECT:
// its MQTT 5 topic aliases, so a PUBLISH that names its topic by alias is
// authorized against the topic the alias stands for, and the topics of its
// QoS 2 messages until their PUBREL. Not safe for concurrent use.
type Session struct {
	Version    byte
	aliases    map[uint16]string
	aliasBytes int
	// qos2 holds the topics of the QoS 2 PUBLISH packets not released yet,
	// by packet identifier, when the session keeps them on this connection
	// only (store is nil).
	qos2      map[uint16]string
	qos2Bytes int
	// store keeps them instead under key, for the later connections of a
	// persistent session (Resume).
	store *Releases
	key   string
}

// Inspect decodes one client packet of the session (after CONNECT) and
// says what it asks. A packet that breaks the protocol gets an error whose
// DisconnectReason is the MQTT 5 reason code to close with: 0x81
// (malformed) or 0x82 (protocol error, which is also what an alias that
// was never set is: MQTT 5 §3.3.4, and mosquitto's answer), 0x94 for topic
// alias 0 (§3.3.2.3.4), 0x97 when the aliases outgrow maxAliasBytes or a
// SUBSCRIBE carries more than MaxSubscribeFilters filters.
func (s *Session) Inspect(h Header, body []byte) (Action, error) {
	switch h.Type {
	case TypeConnect:
		return Action{}, protocolErr(0x82, "second CONNECT") // [MQTT-3.1.0-2]
	case TypeAuth:
		if s.Version != 5 {
			return Action{}, malformed("AUTH before MQTT 5")
		}
	case TypeConnack, TypeSuback, TypeUnsuback, TypePingresp:
		return Action{}, protocolErr(0x82, "server packet type %d from a client", h.Type)
	case TypeDisconnect:
		// Strict: a DISCONNECT the broker would refuse as malformed makes
		// it close the connection with an error, and so publish the will
		// that a well-formed one discards (the relay relies on which).
		a := Action{Kind: KindDisconnect}
		if s.Version != 5 {
			if len(body) != 0 {
				return Action{}, malformed("DISCONNECT with a body") // MQTT 3.1.1 §3.14.1
			}
			return a, nil
		}
		if len(body) == 0 {
			return a, nil // reason 0x00, no properties (MQTT 5 §3.14.2.1)
		}
		if !disconnectReasons[body[0]] {
			return Action{}, protocolErr(0x82, "DISCONNECT reason %#x", body[0])
		}
		a.WillAsked = body[0] == 0x04
		if len(body) > 1 {
			d := &decoder{b: body[1:]}
			d.properties("DISCONNECT", disconnectProps, nil)
			if d.err == nil && len(d.b) != 0 {
				d.fail(malformed("DISCONNECT: %d bytes after the properties", len(d.b)))
			}
			if d.err != nil {
				return Action{}, d.err
			}
		}
		return a, nil
	case TypePublish:
		p, err := ParsePublish(h, body, s.Version)
		if err != nil {
			return Action{}, fmt.Errorf("PUBLISH: %w", err)
		}
		topic := p.Topic
		if p.Alias != 0 {
			if topic == "" {
				t, ok := s.aliases[p.Alias]
				if !ok {
					return Action{}, protocolErr(0x82, "PUBLISH: topic alias %d was never set", p.Alias)
				}
				topic = t
			} else {
				if s.aliases == nil {
					s.aliases = map[uint16]string{}
				}
				s.aliasBytes += len(topic) - len(s.aliases[p.Alias])
				if s.aliasBytes > maxAliasBytes {
					return Action{}, protocolErr(0x97, "PUBLISH: topic aliases hold more than %d bytes", maxAliasBytes)
				}
				s.aliases[p.Alias] = topic
			}
		}
		if p.QoS == 2 && s.store != nil {
			if !s.store.hold(s.key, p.PacketID, topic) {
				return Action{}, protocolErr(0x93, "PUBLISH: unreleased QoS 2 messages hold more than %d bytes of topics", maxAliasBytes)
			}
		} else if p.QoS == 2 {
			if s.qos2 == nil {
				s.qos2 = map[uint16]string{}
			}
			s.qos2Bytes += len(topic) - len(s.qos2[p.PacketID])
			if s.qos2Bytes > maxAliasBytes {
				return Action{}, protocolErr(0x93, "PUBLISH: unreleased QoS 2 messages hold more than %d bytes of topics", maxAliasBytes)
			}
			s.qos2[p.PacketID] = topic
		}
		return Action{Kind: KindPublish, Topics: PublishedForms(topic)}, nil
	case TypePubrel:
		if len(body) < 2 {
			return Action{}, malformed("PUBREL without a packet identifier")
		}
		id := uint16(body[0])<<8 | uint16(body[1])
		var topic string
		var ok bool
		if s.store != nil {
			topic, ok = s.store.release(s.key, id)
		} else if topic, ok = s.qos2[id]; ok {
			delete(s.qos2, id)
			s.qos2Bytes -= len(topic)
		}
		if !ok {
			return Action{Kind: KindUnknownRelease, PacketID: id}, nil
		}
		return Action{Kind: KindRelease, Topics: PublishedForms(topic), PacketID: id}, nil
	case TypeSubscribe:
		sub, err := ParseSubscribe(body, s.Version)
		if err != nil {
			return Action{}, fmt.Errorf("SUBSCRIBE: %w", err)
		}
		a := Action{Kind: KindSubscribe}
		for _, f := range sub.Filters {
			a.Topics = append(a.Topics, SubscribedForms(f.Filter)...)
			a.Filters = append(a.Filters, f.Filter)
		}
		return a, nil
	}
	return Action{}, nil
}
