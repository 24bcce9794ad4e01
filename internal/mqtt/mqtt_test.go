package mqtt

import (
	"bytes"
	"errors"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
)

func connectBytes(t testing.TB, version byte, id string) []byte {
	t.Helper()
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: version,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: id, Keepalive: 30, Clean: true,
			UsernameFlag: true, Username: []byte("u")}}
	if version == 3 {
		pk.Connect.ProtocolName = []byte("MQIsdp")
	}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestReadConnect(t *testing.T) {
	for _, v := range []byte{3, 4, 5} {
		b := connectBytes(t, v, "sensor-42")
		trailing := append(append([]byte(nil), b...), 0xc0, 0x00) // a PINGREQ after it
		r := bytes.NewReader(trailing)
		c, raw, err := ReadConnect(r)
		if err != nil {
			t.Fatalf("v%d: %v", v, err)
		}
		if c.ClientID != "sensor-42" || c.Version != v || c.Keepalive != 30 || c.Username != "u" {
			t.Fatalf("v%d: %+v", v, c)
		}
		if !bytes.Equal(raw, b) || r.Len() != 2 {
			t.Fatalf("v%d: read %d bytes, want exactly the CONNECT (%d)", v, len(raw), len(b))
		}
	}
	for name, in := range map[string][]byte{
		"publish first": {0x30, 0x02, 0, 0},
		"huge length":   {0x10, 0xff, 0xff, 0xff, 0x7f},
		"bad length":    {0x10, 0xff, 0xff, 0xff, 0xff, 0x01},
		"truncated":     connectBytes(t, 4, "x")[:8],
		"bad version":   append([]byte{0x10, 10, 0, 4, 'M', 'Q', 'T', 'T', 9}, 0, 0, 30, 0, 0),
		"empty":         {},
	} {
		if _, _, err := ReadConnect(bytes.NewReader(in)); err == nil {
			t.Errorf("%s: accepted", name)
		} else if name == "publish first" && !errors.Is(err, ErrNotConnect) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func FuzzReadConnect(f *testing.F) {
	f.Add(connectBytes(f, 4, "sensor-1"))
	f.Add(connectBytes(f, 5, ""))
	f.Add(connectBytes(f, 3, "old"))
	f.Add([]byte{0x10, 0x80, 0x80, 0x80, 0x80, 0x01})
	f.Add([]byte{0x30, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, raw, err := ReadConnect(bytes.NewReader(b))
		if len(raw) > len(b) {
			t.Fatalf("consumed %d of %d bytes", len(raw), len(b))
		}
		if err == nil && !bytes.Equal(raw, b[:len(raw)]) {
			t.Fatal("raw bytes are not the prefix read")
		}
		_ = c
	})
}

// FuzzInspect: client packets after CONNECT (the inspecting relay's input)
// never crash the reader or the decoders, in MQTT 3.1.1 and 5.
func FuzzInspect(f *testing.F) {
	pub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "sensors/temp", Payload: []byte("21.5")}
	var b bytes.Buffer
	pub.PublishEncode(&b)
	f.Add(b.Bytes(), byte(4))
	f.Add(b.Bytes(), byte(5))
	sub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 7,
		Filters: packets.Subscriptions{{Filter: "sensors/#", Qos: 1}}}
	b.Reset()
	sub.SubscribeEncode(&b)
	f.Add(b.Bytes(), byte(4))
	f.Add([]byte{0x30, 0x05, 0x00, 0xff, 'x', 'y', 'z'}, byte(5))
	f.Add([]byte{0xc0, 0x00}, byte(4))
	f.Fuzz(func(t *testing.T, in []byte, version byte) {
		r := bytes.NewReader(in)
		for i := 0; i < 4; i++ {
			fh, raw, body, err := ReadPacket(r, 1<<16)
			if err != nil {
				return
			}
			if len(raw) < len(body) {
				t.Fatal("body longer than the packet")
			}
			Topics(fh, body, version)
		}
	})
}
