package mqtt

import (
	"bytes"
	"slices"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
)

// clientProps sets every MQTT 5 property a client may send in some packet
// (the reference codec writes only those valid for the packet it encodes).
// withSubID adds a Subscription Identifier, which only a SUBSCRIBE may
// carry from a client [MQTT-3.3.4-6].
func clientProps(withSubID bool) packets.Properties {
	p := packets.Properties{
		PayloadFormat: 1, PayloadFormatFlag: true,
		MessageExpiryInterval: 60,
		ContentType:           "text/plain",
		ResponseTopic:         "replies/1",
		CorrelationData:       []byte{1, 2, 3},
		SessionExpiryInterval: 120, SessionExpiryIntervalFlag: true,
		AuthenticationMethod: "SCRAM-SHA-1",
		AuthenticationData:   []byte("client-first"),
		RequestProblemInfo:   1, RequestProblemInfoFlag: true,
		WillDelayInterval:   5,
		RequestResponseInfo: 1,
		ReasonString:        "because",
		ReceiveMaximum:      10,
		TopicAliasMaximum:   5,
		MaximumPacketSize:   1 << 20,
		User:                []packets.UserProperty{{Key: "k", Val: "v"}, {Key: "k", Val: "w"}},
	}
	if withSubID {
		p.SubscriptionIdentifier = []int{7}
	}
	return p
}

// encode is pk as the reference codec writes it.
func encode(t *testing.T, pk *packets.Packet) []byte {
	t.Helper()
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&buf)
	case packets.Publish:
		err = pk.PublishEncode(&buf)
	case packets.Puback:
		err = pk.PubackEncode(&buf)
	case packets.Pubrec:
		err = pk.PubrecEncode(&buf)
	case packets.Pubrel:
		err = pk.PubrelEncode(&buf)
	case packets.Pubcomp:
		err = pk.PubcompEncode(&buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(&buf)
	case packets.Unsubscribe:
		err = pk.UnsubscribeEncode(&buf)
	case packets.Pingreq:
		err = pk.PingreqEncode(&buf)
	case packets.Disconnect:
		err = pk.DisconnectEncode(&buf)
	case packets.Auth:
		err = pk.AuthEncode(&buf)
	}
	if err != nil {
		t.Fatalf("the reference could not encode packet type %d: %v", pk.FixedHeader.Type, err)
	}
	return buf.Bytes()
}

// TestAcceptsReferenceEncodings: every client packet as mochi-mqtt's codec
// writes it, in MQTT 3.1.1 and in MQTT 5 with every property a client may
// put in it, is read and accepted, and read as what it is (FuzzDifferential
// checks the other direction: nothing the reference rejects is accepted).
// An MQTT 5 DISCONNECT with a reason string was refused until the property
// table knew 0x1f; a client's normal disconnection then left the broker to
// publish its will.
func TestAcceptsReferenceEncodings(t *testing.T) {
	for _, v := range []byte{4, 5} {
		var props, pubProps, subProps packets.Properties
		if v == 5 {
			props, pubProps, subProps = clientProps(false), clientProps(false), clientProps(true)
			pubProps.TopicAlias, pubProps.TopicAliasFlag = 3, true
		}
		connect := encode(t, &packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: v,
			Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: "cid", Keepalive: 30, Clean: true,
				WillFlag: true, WillTopic: "last/will", WillPayload: []byte("gone"), WillQos: 1, WillProperties: props,
				UsernameFlag: true, Username: []byte("user"), PasswordFlag: true, Password: []byte("pw")},
			Properties: props})
		cn, raw, err := ReadConnect(bytes.NewReader(connect))
		if err != nil {
			t.Fatalf("v%d CONNECT % x: %v", v, connect, err)
		}
		if !bytes.Equal(raw, connect) || cn.Version != v || cn.ClientID != "cid" || cn.Keepalive != 30 || !cn.Will || cn.WillTopic != "last/will" {
			t.Fatalf("v%d CONNECT read as %+v", v, cn)
		}
		type want struct {
			kind   int
			topics []string
		}
		cases := []struct {
			name string
			pk   packets.Packet
			want want
		}{
			{"PUBLISH QoS 1", packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Retain: true},
				TopicName: "a/b", PacketID: 1, Payload: []byte("hi"), Properties: pubProps}, want{KindPublish, []string{"a/b"}}},
			{"PUBACK", packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: 2, ReasonCode: 0x10, Properties: props}, want{KindOther, nil}},
			{"PUBREC", packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrec}, PacketID: 3, ReasonCode: 0x10, Properties: props}, want{KindOther, nil}},
			{"PUBREL", packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}, PacketID: 3, ReasonCode: 0x92, Properties: props}, want{KindUnknownRelease, nil}}, // no QoS 2 PUBLISH 3 came
			{"PUBCOMP", packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubcomp}, PacketID: 3, ReasonCode: 0x92, Properties: props}, want{KindOther, nil}},
			{"SUBSCRIBE", packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 4, Properties: subProps,
				Filters: packets.Subscriptions{{Filter: "x/#", Qos: 1}, {Filter: "y/+/z", Qos: 2}}}, want{KindSubscribe, []string{"x/#", "y/+/z"}}},
			{"UNSUBSCRIBE", packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe, Qos: 1}, PacketID: 5, Properties: props,
				Filters: packets.Subscriptions{{Filter: "x/#"}}}, want{KindOther, nil}},
			{"PINGREQ", packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}}, want{KindOther, nil}},
			{"DISCONNECT", packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}, ReasonCode: 0x04, Properties: props}, want{KindDisconnect, nil}},
		}
		if v == 5 {
			cases = append(cases, struct {
				name string
				pk   packets.Packet
				want want
			}{"AUTH", packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Auth}, ReasonCode: 0x18, Properties: props}, want{KindOther, nil}})
		}
		s := Session{Version: v}
		for _, c := range cases {
			c.pk.ProtocolVersion = v
			b := encode(t, &c.pk)
			h, raw, body, err := ReadPacket(bytes.NewReader(b), MaxPacketSize)
			if err != nil || !bytes.Equal(raw, b) {
				t.Errorf("v%d %s % x: read %v", v, c.name, b, err)
				continue
			}
			a, err := s.Inspect(h, body)
			if err != nil {
				t.Errorf("v%d %s % x: refused: %v", v, c.name, b, err)
				continue
			}
			if a.Kind != c.want.kind || !slices.Equal(a.Topics, c.want.topics) {
				t.Errorf("v%d %s: read as kind %d %q, want %d %q", v, c.name, a.Kind, a.Topics, c.want.kind, c.want.topics)
			}
		}
	}
}
