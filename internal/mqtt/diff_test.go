package mqtt

import (
	"bytes"
	"fmt"
	"io"
	"slices"
	"testing"

	// The reference decoder, imported by this test only: the agent binary
	// does not link it (cmd/fogmesh-agent's TestLeanImportGraph).
	"github.com/mochi-mqtt/server/v2/packets"
)

// refFrame frames one packet the way mochi-mqtt's server does (fixed
// header byte, Variable Byte Integer length, body).
func refFrame(r *bytes.Reader) (packets.FixedHeader, []byte, error) {
	var fh packets.FixedHeader
	hb, err := r.ReadByte()
	if err != nil {
		return fh, nil, err
	}
	if err := fh.Decode(hb); err != nil {
		return fh, nil, err
	}
	n, _, err := packets.DecodeLength(r)
	if err != nil {
		return fh, nil, err
	}
	fh.Remaining = n
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return fh, nil, err
	}
	return fh, body, nil
}

// refDecode runs one of mochi's decoders; a panic (some of its decoders
// index past the end of hostile input) counts as a rejection.
func refDecode(decode func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("reference panicked: %v", r)
		}
	}()
	return decode()
}

// FuzzDifferential feeds the same bytes (a CONNECT, then the client
// packets of the connection) to this package and to mochi-mqtt's packet
// codec, and asserts that this package accepts nothing the reference
// rejects and reads every packet as the reference does: packet type,
// length, protocol level, client id, will flag and topic, user name,
// PUBLISH topic, topic alias, QoS and packet id, SUBSCRIBE filters and
// their QoS. This package is stricter than the reference in places (it
// checks what mochi leaves to its server or does not check: reserved
// bits, trailing bytes, wildcards in will topics, properties ending past
// their length); that direction is allowed.
//
// Two rules of mochi's ConnectValidate are not in the specifications and
// are not followed: a will with a zero-length payload and a password flag
// with a zero-length password are valid MQTT (both fields are Binary
// Data, which may be empty; mosquitto accepts them).
func FuzzDifferential(f *testing.F) {
	for _, b := range captured(f) {
		f.Add(b)
	}
	for _, b := range [][]byte{
		connectBytes("MQTT", 4, 0x06, s16("x"), s16("alerts/#"), s16("m")),
		connectBytes("MQTT", 4, 0x0e, s16("x"), s16("alerts/fire"), s16("m")),
		connectBytes("MQTX", 4, 2, s16("x")),
		connectBytes("MQTT", 9, 2, s16("x")),
		connectBytes("MQTT", 5, 2, []byte{9, 0x21, 0, 1}, s16("x")),
		connectBytes("MQTT", 5, 6, []byte{0}, s16("x"), []byte{5, 0x18, 0, 0, 0, 5}, s16("a/b"), s16("m")),
		connectBytes("MQTT", 4, 2, s16("x"), []byte("zz")),
		append(connectBytes("MQTT", 5, 2, []byte{0}, s16("p")),
			append(pkt(0x32, s16("t/1"), []byte{0, 1, 3, 0x23, 0, 1}, []byte("v")), pkt(0x32, s16(""), []byte{0, 2, 3, 0x23, 0, 1}, []byte("v"))...)...),
		append(connectBytes("MQTT", 5, 2, []byte{0}, s16("p")), pkt(0x30, s16(""), []byte{3, 0x23, 0, 9})...),
		append(connectBytes("MQTT", 5, 2, []byte{0}, s16("s")), pkt(0x82, []byte{0, 1, 0}, s16("$share/g/a/#"), []byte{0x01})...),
		append(connectBytes("MQTT", 5, 2, []byte{0}, s16("s")), 0x82, 0x05, 0, 1, 0, 0, 1), // filter's options byte missing
		append(connectBytes("MQTT", 4, 2, s16("s")), pkt(0x82, []byte{0, 1}, s16("a/+/b"), []byte{0x03})...),
		append(connectBytes("MQTT", 4, 2, s16("s")), 0x30, 0x05, 0x00, 0xff, 'x', 'y', 'z'),
		append(connectBytes("MQTT", 4, 2, s16("s")), 0x30, 0x80, 0x80, 0x80, 0x80, 0x01),
	} {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		ours, ref := bytes.NewReader(in), bytes.NewReader(in)
		c, raw, err := ReadConnect(ours)
		if err != nil {
			return
		}
		fh, body, rerr := refFrame(ref)
		if rerr != nil || fh.Type != packets.Connect || len(raw) != int(ref.Size())-ref.Len() {
			t.Fatalf("CONNECT accepted (%d bytes), the reference frames it otherwise: type %d, %d bytes, %v", len(raw), fh.Type, int(ref.Size())-ref.Len(), rerr)
		}
		pk := packets.Packet{FixedHeader: fh}
		if rerr = refDecode(func() error { return pk.ConnectDecode(body) }); rerr == nil {
			if code := pk.ConnectValidate(); code != packets.CodeSuccess &&
				code != packets.ErrProtocolViolationWillFlagNoPayload && code != packets.ErrProtocolViolationFlagNoPassword {
				rerr = code
			}
		}
		if rerr != nil {
			t.Fatalf("CONNECT %+v accepted, the reference rejects it: %v", c, rerr)
		}
		if c.Version != pk.ProtocolVersion || c.ProtocolName != string(pk.Connect.ProtocolName) || c.ClientID != pk.Connect.ClientIdentifier ||
			c.Will != pk.Connect.WillFlag || c.WillTopic != pk.Connect.WillTopic || c.WillQoS != pk.Connect.WillQos ||
			c.Username != string(pk.Connect.Username) || c.Keepalive != pk.Connect.Keepalive || c.CleanStart != pk.Connect.Clean {
			t.Fatalf("CONNECT read as %+v, the reference reads %+v", c, pk.Connect)
		}
		s := Session{Version: c.Version}
		for i := 0; i < 8; i++ {
			h, raw, body, err := ReadPacket(ours, MaxPacketSize)
			if err != nil {
				return
			}
			a, err := s.Inspect(h, body)
			if err != nil {
				return
			}
			fh, rbody, rerr := refFrame(ref)
			if rerr != nil || fh.Type != h.Type || fh.Remaining != h.Remaining || !bytes.Equal(rbody, body) {
				t.Fatalf("packet % x accepted, the reference frames it as type %d, %d bytes: %v", raw, fh.Type, fh.Remaining, rerr)
			}
			pk := packets.Packet{FixedHeader: fh, ProtocolVersion: c.Version}
			switch h.Type {
			case TypePublish:
				p, _ := ParsePublish(h, body, c.Version)
				if rerr = refDecode(func() error { return pk.PublishDecode(body) }); rerr == nil {
					if code := pk.PublishValidate(65535); code != packets.CodeSuccess {
						rerr = code
					}
				}
				if rerr != nil {
					t.Fatalf("PUBLISH %+v accepted, the reference rejects it: %v", p, rerr)
				}
				if p.Topic != pk.TopicName || p.Alias != pk.Properties.TopicAlias || p.QoS != pk.FixedHeader.Qos || p.PacketID != pk.PacketID {
					t.Fatalf("PUBLISH read as %+v, the reference reads topic %q alias %d QoS %d id %d",
						p, pk.TopicName, pk.Properties.TopicAlias, pk.FixedHeader.Qos, pk.PacketID)
				}
				if p.Topic != "" && a.Topics[0] != p.Topic {
					t.Fatalf("PUBLISH to %q authorized as %q", p.Topic, a.Topics[0])
				}
			case TypeSubscribe:
				sub, _ := ParseSubscribe(body, c.Version)
				if rerr = refDecode(func() error { return pk.SubscribeDecode(body) }); rerr == nil {
					if code := pk.SubscribeValidate(); code != packets.CodeSuccess {
						rerr = code
					}
				}
				if rerr != nil {
					t.Fatalf("SUBSCRIBE %+v accepted, the reference rejects it: %v", sub, rerr)
				}
				var got, want []string
				for _, f := range sub.Filters {
					got = append(got, fmt.Sprintf("%s@%d", f.Filter, f.Options&3))
				}
				for _, f := range pk.Filters {
					want = append(want, fmt.Sprintf("%s@%d", f.Filter, f.Qos))
				}
				if !slices.Equal(got, want) || sub.PacketID != pk.PacketID {
					t.Fatalf("SUBSCRIBE read as %v (id %d), the reference reads %v (id %d)", got, sub.PacketID, want, pk.PacketID)
				}
			}
		}
	})
}
