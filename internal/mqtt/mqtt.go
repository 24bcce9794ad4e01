// Package mqtt reads the first packet of an MQTT connection (CONNECT, MQTT
// 3.1, 3.1.1 and 5) so the agent can pin a client id to one broker instance,
// and writes the CONNACK that refuses a connection. Packet decoding is done
// by mochi-mqtt's packets library; this package only frames the first packet
// without reading past it, so that the rest of the connection can still be
// spliced by the kernel.
package mqtt

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/mochi-mqtt/server/v2/packets"
)

// MaxConnectSize bounds the CONNECT packet the agent will read (will
// payloads and v5 properties included).
const MaxConnectSize = 64 << 10

// Connect is what the agent uses of a CONNECT packet.
type Connect struct {
	ClientID  string
	Keepalive uint16
	Version   byte // 3 (3.1), 4 (3.1.1) or 5
	Username  string
}

// ErrNotConnect is returned when the first packet is not CONNECT.
var ErrNotConnect = errors.New("mqtt: first packet is not CONNECT")

// MaxPacketSize bounds the packets the agent reads in inspecting mode.
const MaxPacketSize = 16 << 20

// ReadPacket reads exactly one packet (never beyond it) and returns its
// fixed header, its raw bytes (to forward as they are) and its body.
func ReadPacket(r io.Reader, max int) (packets.FixedHeader, []byte, []byte, error) {
	var fh packets.FixedHeader
	var raw bytes.Buffer
	one := make([]byte, 1)
	readByte := func() (byte, error) {
		if _, err := io.ReadFull(r, one); err != nil {
			return 0, err
		}
		raw.WriteByte(one[0])
		return one[0], nil
	}
	hb, err := readByte()
	if err != nil {
		return fh, nil, nil, err // io.EOF: the client closed cleanly
	}
	if err := fh.Decode(hb); err != nil {
		return fh, raw.Bytes(), nil, fmt.Errorf("mqtt: fixed header: %w", err)
	}
	n, _, err := packets.DecodeLength(byteReaderFunc(readByte))
	if err != nil {
		return fh, raw.Bytes(), nil, fmt.Errorf("mqtt: remaining length: %w", err)
	}
	if n < 0 || n > max {
		return fh, raw.Bytes(), nil, fmt.Errorf("mqtt: packet of %d bytes (limit %d)", n, max)
	}
	fh.Remaining = n
	hdr := raw.Len()
	raw.Grow(n)
	if _, err := io.CopyN(&raw, r, int64(n)); err != nil {
		return fh, raw.Bytes(), nil, fmt.Errorf("mqtt: read packet: %w", io.ErrUnexpectedEOF)
	}
	b := raw.Bytes()
	return fh, b, b[hdr:], nil
}

// ReadConnect reads exactly one packet from r, which must be CONNECT, and
// returns it parsed together with the raw bytes read (to replay upstream).
// It never reads beyond the packet.
func ReadConnect(r io.Reader) (Connect, []byte, error) {
	fh, raw, body, err := ReadPacket(r, MaxConnectSize)
	if err != nil {
		if err == io.EOF {
			err = fmt.Errorf("mqtt: read fixed header: %w", err)
		}
		return Connect{}, raw, err
	}
	if fh.Type != packets.Connect {
		return Connect{}, raw, ErrNotConnect
	}
	if len(body) == 0 {
		return Connect{}, raw, errors.New("mqtt: empty CONNECT")
	}
	pk := packets.Packet{FixedHeader: fh}
	if err := safeDecode(func() error { return pk.ConnectDecode(body) }); err != nil {
		return Connect{}, raw, fmt.Errorf("mqtt: decode CONNECT: %w", err)
	}
	switch pk.ProtocolVersion {
	case 3, 4, 5:
	default:
		return Connect{}, raw, fmt.Errorf("mqtt: protocol version %d", pk.ProtocolVersion)
	}
	return Connect{ClientID: pk.Connect.ClientIdentifier, Keepalive: pk.Connect.Keepalive,
		Version: pk.ProtocolVersion, Username: string(pk.Connect.Username)}, raw, nil
}

// Topics returns what a client packet says about topics: the topic of a
// PUBLISH, or the filters of a SUBSCRIBE; kind is "publish", "subscribe" or
// "" for other packets. version is the connection's protocol version.
func Topics(fh packets.FixedHeader, body []byte, version byte) (kind string, topics []string, err error) {
	pk := packets.Packet{FixedHeader: fh, ProtocolVersion: version}
	switch fh.Type {
	case packets.Publish:
		if err := safeDecode(func() error { return pk.PublishDecode(body) }); err != nil {
			return "", nil, fmt.Errorf("mqtt: decode PUBLISH: %w", err)
		}
		return "publish", []string{pk.TopicName}, nil
	case packets.Subscribe:
		if err := safeDecode(func() error { return pk.SubscribeDecode(body) }); err != nil {
			return "", nil, fmt.Errorf("mqtt: decode SUBSCRIBE: %w", err)
		}
		for _, f := range pk.Filters {
			topics = append(topics, f.Filter)
		}
		return "subscribe", topics, nil
	}
	return "", nil, nil
}

// safeDecode runs one of the packet library's decoders and turns a panic
// into an error: mochi-mqtt v2.7.9's SubscribeDecode indexes past the end
// of some hostile packets (found by FuzzInspect; the input is in
// testdata/fuzz/FuzzInspect), and a client's bytes must never crash the
// agent.
func safeDecode(decode func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("malformed packet: %v", r)
		}
	}()
	return decode()
}

type byteReaderFunc func() (byte, error)

func (f byteReaderFunc) ReadByte() (byte, error) { return f() }

// Refusal reasons for Connack.
const (
	RefuseMalformed   = iota // the CONNECT could not be read
	RefuseUnavailable        // no broker instance is reachable
)

// Connack returns a CONNACK refusing the connection, in the client's
// protocol version (3.1.1 return codes, or MQTT 5 reason codes).
func Connack(version byte, why int) []byte {
	if version == 5 {
		code := byte(0x81) // malformed packet
		if why == RefuseUnavailable {
			code = 0x88 // server unavailable
		}
		return []byte{0x20, 3, 0, code, 0} // flags, reason, no properties
	}
	code := byte(0x02) // identifier rejected: the closest 3.1.1 code to "bad CONNECT"
	if why == RefuseUnavailable {
		code = 0x03 // server unavailable
	}
	return []byte{0x20, 2, 0, code}
}
