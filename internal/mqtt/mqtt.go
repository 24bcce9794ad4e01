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

// ReadConnect reads exactly one packet from r, which must be CONNECT, and
// returns it parsed together with the raw bytes read (to replay upstream).
// It never reads beyond the packet.
func ReadConnect(r io.Reader) (Connect, []byte, error) {
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
		return Connect{}, nil, fmt.Errorf("mqtt: read fixed header: %w", err)
	}
	var fh packets.FixedHeader
	if err := fh.Decode(hb); err != nil || fh.Type != packets.Connect {
		return Connect{}, raw.Bytes(), ErrNotConnect
	}
	n, _, err := packets.DecodeLength(byteReaderFunc(readByte))
	if err != nil {
		return Connect{}, raw.Bytes(), fmt.Errorf("mqtt: remaining length: %w", err)
	}
	if n <= 0 || n > MaxConnectSize {
		return Connect{}, raw.Bytes(), fmt.Errorf("mqtt: CONNECT of %d bytes (limit %d)", n, MaxConnectSize)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return Connect{}, raw.Bytes(), fmt.Errorf("mqtt: read CONNECT: %w", err)
	}
	raw.Write(body)
	pk := packets.Packet{FixedHeader: fh}
	if err := pk.ConnectDecode(body); err != nil {
		return Connect{}, raw.Bytes(), fmt.Errorf("mqtt: decode CONNECT: %w", err)
	}
	switch pk.ProtocolVersion {
	case 3, 4, 5:
	default:
		return Connect{}, raw.Bytes(), fmt.Errorf("mqtt: protocol version %d", pk.ProtocolVersion)
	}
	return Connect{ClientID: pk.Connect.ClientIdentifier, Keepalive: pk.Connect.Keepalive,
		Version: pk.ProtocolVersion, Username: string(pk.Connect.Username)}, raw.Bytes(), nil
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
