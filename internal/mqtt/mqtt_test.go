package mqtt

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// pkt builds a packet from its first byte and body.
func pkt(first byte, body ...[]byte) []byte {
	b := bytes.Join(body, nil)
	out := []byte{first}
	n := len(b)
	for {
		c := byte(n % 128)
		n /= 128
		if n > 0 {
			c |= 0x80
		}
		out = append(out, c)
		if n == 0 {
			break
		}
	}
	return append(out, b...)
}

// s16 is an MQTT string or binary field.
func s16(s string) []byte { return append([]byte{byte(len(s) >> 8), byte(len(s))}, s...) }

func connectBytes(name string, level, flags byte, fields ...[]byte) []byte {
	return pkt(0x10, append([][]byte{s16(name), {level, flags, 0, 30}}, fields...)...)
}

// captured returns the client-to-broker bytes of real mosquitto_pub and
// mosquitto_sub runs (testdata/captured, recorded by a relay between them
// and mosquitto 2.0.11).
func captured(t testing.TB) map[string][]byte {
	t.Helper()
	files, err := filepath.Glob("testdata/captured/*.bin")
	if err != nil || len(files) == 0 {
		t.Fatalf("no captured packets: %v", err)
	}
	m := map[string][]byte{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		m[strings.TrimSuffix(filepath.Base(f), ".bin")] = b
	}
	return m
}

// TestCaptured reads what real mosquitto clients sent: CONNECTs of MQTT
// 3.1, 3.1.1 and 5 with wills, PUBLISH with MQTT 5 topic aliases (the
// second message of a connection names its topic by alias only), and
// SUBSCRIBE with shared subscriptions.
func TestCaptured(t *testing.T) {
	type want struct {
		version         byte
		id, will        string
		publish, filter []string
	}
	for name, w := range map[string]want{
		"pub31":            {version: 3, id: "pub31", publish: []string{"sensors/a/temperature"}},
		"pub311_will_auth": {version: 4, id: "pub311", will: "alerts/fire", publish: []string{"sensors/a/temperature"}},
		"pub5_will_alias":  {version: 5, id: "pub5", will: "alerts/fire", publish: []string{"sensors/a/temperature", "sensors/a/temperature", "sensors/a/temperature"}},
		"pub5_qos0_alias":  {version: 5, publish: []string{"sensors/b/temperature", "sensors/b/temperature"}},
		"sub311":           {version: 4, id: "sub311", filter: []string{"sensors/#", "alerts/+"}},
		"sub5_shared":      {version: 5, id: "sub5", filter: []string{"sensors/#", "alerts/+/x"}},
	} {
		b := captured(t)[name]
		r := bytes.NewReader(b)
		c, _, err := ReadConnect(r)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if c.Version != w.version || c.ClientID != w.id && w.id != "" || c.WillTopic != w.will || c.Will != (w.will != "") {
			t.Fatalf("%s: %+v", name, c)
		}
		s := Session{Version: c.Version}
		var pubs, filters []string
		for {
			h, _, body, err := ReadPacket(r, MaxPacketSize)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			a, err := s.Inspect(h, body)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			switch a.Kind {
			case KindPublish:
				pubs = append(pubs, a.Topics...)
			case KindSubscribe:
				filters = append(filters, a.Topics...)
			}
		}
		if strings.Join(pubs, " ") != strings.Join(w.publish, " ") || strings.Join(filters, " ") != strings.Join(w.filter, " ") {
			t.Fatalf("%s: published %q, subscribed %q", name, pubs, filters)
		}
	}
}

func TestReadConnect(t *testing.T) {
	b := connectBytes("MQTT", 4, 0xc2, s16("sensor-42"), s16("u"), s16("p"))
	trailing := append(append([]byte(nil), b...), 0xc0, 0x00) // a PINGREQ after it
	r := bytes.NewReader(trailing)
	c, raw, err := ReadConnect(r)
	if err != nil {
		t.Fatal(err)
	}
	if c.ClientID != "sensor-42" || c.Version != 4 || c.Keepalive != 30 || c.Username != "u" || c.Will {
		t.Fatalf("%+v", c)
	}
	if !bytes.Equal(raw, b) || r.Len() != 2 {
		t.Fatalf("read %d bytes, want exactly the CONNECT (%d)", len(raw), len(b))
	}
	for name, in := range map[string][]byte{
		"publish first":         {0x30, 0x02, 0, 0},
		"huge length":           {0x10, 0xff, 0xff, 0xff, 0x7f},
		"five-byte length":      {0x10, 0xff, 0xff, 0xff, 0xff, 0x01},
		"truncated":             connectBytes("MQTT", 4, 2, s16("x"))[:8],
		"flags in fixed header": append([]byte{0x11}, connectBytes("MQTT", 4, 2, s16("x"))[1:]...),
		"reserved flag":         connectBytes("MQTT", 4, 3, s16("x")),
		"bytes after payload":   connectBytes("MQTT", 4, 2, s16("x"), []byte("zz")),
		"client id not UTF-8":   connectBytes("MQTT", 4, 2, s16("\xff")),
		"client id with NUL":    connectBytes("MQTT", 4, 2, s16("a\x00")),
		"will QoS 3":            connectBytes("MQTT", 4, 0x1e, s16("x"), s16("a/b"), s16("m")),
		"will retain, no will":  connectBytes("MQTT", 4, 0x22, s16("x")),
		"will topic wildcard":   connectBytes("MQTT", 4, 0x06, s16("x"), s16("alerts/#"), s16("m")),
		"will topic empty":      connectBytes("MQTT", 4, 0x06, s16("x"), s16(""), s16("m")),
		"will without payload":  connectBytes("MQTT", 4, 0x06, s16("x"), s16("a/b")),
		"password, no user":     connectBytes("MQTT", 4, 0x42, s16("x"), s16("pw")),
		"v5 unknown property":   connectBytes("MQTT", 5, 2, []byte{2, 0x01, 0}, s16("x")),
		"v5 property twice":     connectBytes("MQTT", 5, 2, []byte{6, 0x21, 0, 1, 0x21, 0, 1}, s16("x")),
		"v5 property overruns":  connectBytes("MQTT", 5, 2, []byte{9, 0x21, 0, 1}, s16("x")),
		"v5 will property":      connectBytes("MQTT", 5, 6, []byte{0}, s16("x"), []byte{2, 0x23, 0}, s16("a"), s16("m")),
		"v5 receive maximum 0":  connectBytes("MQTT", 5, 2, []byte{3, 0x21, 0, 0}, s16("x")),
		"empty":                 {},
	} {
		if _, _, err := ReadConnect(bytes.NewReader(in)); err == nil {
			t.Errorf("%s: accepted", name)
		} else if name == "publish first" && !errors.Is(err, ErrNotConnect) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestConnectRefusals: what a client gets for a CONNECT that cannot be
// accepted (MQTT 3.1.1 §3.1.2.2, §4.8; MQTT 5 §3.1.2.1, §4.13; what
// mosquitto sends is checked against a real broker in the agent's
// TestMQTTRefusalsLikeMosquitto).
func TestConnectRefusals(t *testing.T) {
	for name, c := range map[string]struct {
		in   []byte
		want []byte
	}{
		"unknown protocol name":     {connectBytes("MQTX", 4, 2, s16("x")), []byte{0x20, 2, 0, 0x01}},
		"unknown protocol name, v5": {connectBytes("MQTX", 5, 2, []byte{0}, s16("x")), []byte{0x20, 2, 0, 0x01}},
		"MQTT level 9":              {connectBytes("MQTT", 9, 2, s16("x")), []byte{0x20, 2, 0, 0x01}},
		"MQTT level 3":              {connectBytes("MQTT", 3, 2, s16("x")), []byte{0x20, 2, 0, 0x01}},
		"MQIsdp level 4":            {connectBytes("MQIsdp", 4, 2, s16("x")), []byte{0x20, 2, 0, 0x01}},
		"v3.1.1 malformed":          {connectBytes("MQTT", 4, 3, s16("x")), nil},
		"v3.1 malformed":            {connectBytes("MQIsdp", 3, 2, s16("\xff")), nil},
		"v5 malformed":              {connectBytes("MQTT", 5, 3, []byte{0}, s16("x")), []byte{0x20, 3, 0, 0x81, 0}},
		"v5 protocol error":         {connectBytes("MQTT", 5, 2, []byte{2, 0x23, 0}, s16("x")), []byte{0x20, 3, 0, 0x82, 0}},
		"not a CONNECT":             {[]byte{0x30, 0x02, 0, 0}, nil},
		"truncated name":            {[]byte{0x10, 0x03, 0, 4, 'M'}, nil},
	} {
		_, _, err := ReadConnect(bytes.NewReader(c.in))
		if err == nil {
			t.Fatalf("%s: accepted", name)
		}
		if got := RefuseConnect(err); !bytes.Equal(got, c.want) {
			t.Errorf("%s (%v): answer % x, want % x", name, err, got, c.want)
		}
	}
	for _, c := range []struct {
		version byte
		why     int
		want    []byte
	}{
		{4, RefuseNotAuthorized, []byte{0x20, 2, 0, 0x05}},
		{3, RefuseNotAuthorized, []byte{0x20, 2, 0, 0x05}},
		{5, RefuseNotAuthorized, []byte{0x20, 3, 0, 0x87, 0}},
		{4, RefuseUnavailable, []byte{0x20, 2, 0, 0x03}},
		{5, RefuseUnavailable, []byte{0x20, 3, 0, 0x88, 0}},
	} {
		if got := Connack(c.version, c.why); !bytes.Equal(got, c.want) {
			t.Errorf("Connack(%d, %d) = % x, want % x", c.version, c.why, got, c.want)
		}
	}
}

// TestSession: topic aliases resolve to the topic they were set to on the
// connection; an alias never set, alias 0, a second CONNECT and bad
// filters end the session with the MQTT 5 reason code the spec gives.
func TestSession(t *testing.T) {
	pub5 := func(topic string, props ...byte) []byte {
		return pkt(0x30, s16(topic), append([]byte{byte(len(props))}, props...), []byte("21.5"))
	}
	sub := func(version byte, filters ...string) []byte {
		var props []byte
		if version == 5 {
			props = []byte{0}
		}
		b := [][]byte{{0, 1}, props}
		for _, f := range filters {
			b = append(b, s16(f), []byte{1})
		}
		return pkt(0x82, b...)
	}
	type step struct {
		in     []byte
		topics string // what the packet asks, " "-joined
		reason byte   // the DISCONNECT reason of its error, 0 if none
	}
	for name, c := range map[string]struct {
		version byte
		steps   []step
	}{
		"alias set then used": {5, []step{
			{pub5("sensors/a/temperature", 0x23, 0, 1), "sensors/a/temperature", 0},
			{pub5("", 0x23, 0, 1), "sensors/a/temperature", 0},
			{pub5("alerts/fire", 0x23, 0, 1), "alerts/fire", 0}, // remapped
			{pub5("", 0x23, 0, 1), "alerts/fire", 0},
		}},
		"alias never set":    {5, []step{{pub5("", 0x23, 0, 2), "", 0x82}}},
		"alias 0":            {5, []step{{pub5("t", 0x23, 0, 0), "", 0x94}}},
		"no topic, no alias": {5, []step{{pub5(""), "", 0x82}}},
		"alias twice":        {5, []step{{pub5("t", 0x23, 0, 1, 0x23, 0, 2), "", 0x82}}},
		"subscription id":    {5, []step{{pub5("t", 0x0b, 1), "", 0x82}}},
		"wildcard topic":     {4, []step{{pkt(0x30, s16("a/+"), []byte("x")), "", 0x82}}},
		"empty topic 3.1.1":  {4, []step{{pkt(0x30, s16(""), []byte("x")), "", 0x82}}},
		"QoS 1 id 0":         {4, []step{{pkt(0x32, s16("a"), []byte{0, 0}), "", 0x81}}},
		"second CONNECT":     {4, []step{{connectBytes("MQTT", 4, 2, s16("x")), "", 0x82}}},
		"AUTH before v5":     {4, []step{{pkt(0xf0), "", 0x81}}},
		"shared subscription": {5, []step{
			{sub(5, "$share/g/secrets/#", "alerts/+"), "secrets/# alerts/+", 0},
		}},
		"shared subscription 3.1.1": {4, []step{{sub(4, "$share/g/secrets/#"), "secrets/#", 0}}},
		"shared, no filter":         {4, []step{{sub(4, "$share/g"), "", 0x81}}},
		"bad filter":                {4, []step{{sub(4, "a/#/b"), "", 0x81}}},
		// EMQX's shared subscription without a group and its exclusive
		// subscription receive what the filter after the prefix does: both
		// forms are authorized (a DENY of either denies, an ALLOW must
		// allow both).
		"EMQX $queue":            {4, []step{{sub(4, "$queue/secrets/#", "$queue"), "secrets/# $queue/secrets/# $queue", 0}}},
		"EMQX $exclusive":        {5, []step{{sub(5, "$exclusive/secrets/+"), "secrets/+ $exclusive/secrets/+", 0}}},
		"$queue, no filter":      {4, []step{{sub(4, "$queue/"), "$queue/", 0}}},
		"shared $queue":          {5, []step{{sub(5, "$share/g/$queue/a"), "a $queue/a", 0}}},
		"no local on $exclusive": {5, []step{{pkt(0x82, []byte{0, 1, 0}, s16("$exclusive/a"), []byte{0x05}), "a $exclusive/a", 0}}},
		// EMQX's delayed publish delivers to the topic after its delay
		// (after every delay, nested), also when a QoS 2 message is
		// released; an alias holds the topic as sent.
		"EMQX $delayed": {5, []step{
			{pub5("$delayed/15/secrets/a", 0x23, 0, 1), "secrets/a $delayed/15/secrets/a", 0},
			{pub5("", 0x23, 0, 1), "secrets/a $delayed/15/secrets/a", 0},
			{pub5("$delayed/0/$delayed/0/secrets/a"), "secrets/a $delayed/0/secrets/a $delayed/0/$delayed/0/secrets/a", 0},
			{pub5("$delayed/15"), "$delayed/15", 0},
			{pub5("$delayed/15/"), "$delayed/15/", 0},
		}},
		"EMQX $delayed QoS 2": {4, []step{
			{pkt(0x34, s16("$delayed/1/secrets/a"), []byte{0, 7}, []byte("x")), "secrets/a $delayed/1/secrets/a", 0},
			{pkt(0x62, []byte{0, 7}), "secrets/a $delayed/1/secrets/a", 0},
		}},
		"no filter":               {4, []step{{sub(4), "", 0x82}}},
		"reserved option bits":    {4, []step{{pkt(0x82, []byte{0, 1}, s16("a"), []byte{0x05}), "", 0x81}}},
		"v5 reserved option bits": {5, []step{{pkt(0x82, []byte{0, 1, 0}, s16("a"), []byte{0x41}), "", 0x81}}},
		"v5 retain handling 3":    {5, []step{{pkt(0x82, []byte{0, 1, 0}, s16("a"), []byte{0x31}), "", 0x82}}},
		"v5 options":              {5, []step{{pkt(0x82, []byte{0, 1, 0}, s16("a"), []byte{0x2e}), "a", 0}}},
		"PINGREQ and DISCONNECT":  {4, []step{{[]byte{0xc0, 0}, "", 0}, {[]byte{0xe0, 0}, "", 0}}},
		// A DISCONNECT the broker would refuse would make it publish the
		// will: refused here first.
		"DISCONNECT with a body 3.1.1":     {4, []step{{[]byte{0xe0, 1, 0}, "", 0x81}}},
		"v5 DISCONNECT props overrun":      {5, []step{{[]byte{0xe0, 2, 0, 5}, "", 0x81}}},
		"v5 DISCONNECT unknown reason":     {5, []step{{[]byte{0xe0, 1, 0x05}, "", 0x82}}},
		"v5 DISCONNECT server property":    {5, []step{{[]byte{0xe0, 5, 0, 3, 0x1c, 0, 0}, "", 0x82}}},
		"v5 DISCONNECT trailing bytes":     {5, []step{{[]byte{0xe0, 3, 0, 0, 9}, "", 0x81}}},
		"v5 DISCONNECT with will, reasons": {5, []step{{[]byte{0xe0, 1, 0x04}, "", 0}}},
		"v5 DISCONNECT session expiry":     {5, []step{{[]byte{0xe0, 7, 0, 5, 0x11, 0, 0, 0, 0}, "", 0}}},
	} {
		s := Session{Version: c.version}
		for i, st := range c.steps {
			h, _, body, err := ReadPacket(bytes.NewReader(st.in), MaxPacketSize)
			if err == nil {
				var a Action
				a, err = s.Inspect(h, body)
				if got := strings.Join(a.Topics, " "); err == nil && got != st.topics {
					t.Errorf("%s step %d: topics %q, want %q", name, i, got, st.topics)
				}
			}
			switch {
			case st.reason == 0 && err != nil:
				t.Errorf("%s step %d: %v", name, i, err)
			case st.reason != 0 && err == nil:
				t.Errorf("%s step %d: accepted", name, i)
			case st.reason != 0 && DisconnectReason(err) != st.reason:
				t.Errorf("%s step %d: reason %#x, want %#x (%v)", name, i, DisconnectReason(err), st.reason, err)
			}
		}
	}
}

// TestDisconnectWithWill: an MQTT 5 DISCONNECT 0x04 is reported, so the
// relay can keep the broker from publishing a will denied since CONNECT.
func TestDisconnectWithWill(t *testing.T) {
	s := Session{Version: 5}
	for _, c := range []struct {
		in   []byte
		will bool
	}{{[]byte{0xe0, 0}, false}, {[]byte{0xe0, 1, 0}, false}, {[]byte{0xe0, 2, 4, 0}, true},
		// A reason string (0x1f) and a user property: it was read as a
		// one-byte property, and the DISCONNECT refused as a protocol error
		// (the relay then closed without it, and the broker published the will).
		{[]byte{0xe0, 15, 0, 13, 0x1f, 0, 3, 'b', 'y', 'e', 0x26, 0, 1, 'k', 0, 1, 'v'}, false},
		{[]byte{0xe0, 8, 4, 6, 0x1f, 0, 3, 'b', 'y', 'e'}, true}} {
		h, _, body, _ := ReadPacket(bytes.NewReader(c.in), 16)
		a, err := s.Inspect(h, body)
		if err != nil || a.Kind != KindDisconnect || a.WillAsked != c.will {
			t.Errorf("% x: %+v %v", c.in, a, err)
		}
	}
}

func FuzzReadConnect(f *testing.F) {
	for _, b := range captured(f) {
		f.Add(b)
	}
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
		if err == nil && c.Will && ValidTopicName(c.WillTopic) != nil {
			t.Fatalf("accepted will topic %q", c.WillTopic)
		}
		if err != nil {
			RefuseConnect(err)
		}
	})
}

// FuzzInspect: client packets after CONNECT (the inspecting relay's input)
// never crash the reader or the session, in MQTT 3.1.1 and 5, and what
// they ask is a valid topic or filter.
func FuzzInspect(f *testing.F) {
	for _, b := range captured(f) {
		c, raw, _ := ReadConnect(bytes.NewReader(b))
		f.Add(b[len(raw):], c.Version)
	}
	f.Add([]byte{0x30, 0x05, 0x00, 0xff, 'x', 'y', 'z'}, byte(5))
	f.Add([]byte{0xc0, 0x00}, byte(4))
	f.Fuzz(func(t *testing.T, in []byte, version byte) {
		r := bytes.NewReader(in)
		s := Session{Version: version}
		for i := 0; i < 8; i++ {
			h, raw, body, err := ReadPacket(r, 1<<16)
			if err != nil {
				return
			}
			if len(raw) < len(body) {
				t.Fatal("body longer than the packet")
			}
			a, err := s.Inspect(h, body)
			if err != nil {
				return
			}
			for _, topic := range a.Topics {
				if a.Kind == KindPublish && ValidTopicName(topic) != nil || a.Kind == KindSubscribe && ValidTopicFilter(topic) != nil {
					t.Fatalf("kind %d asks invalid %q", a.Kind, topic)
				}
			}
		}
	})
}

// TestReadPacketLarge: a large packet is read whole; one cut short returns
// what arrived, without the memory its declared length would take.
func TestReadPacketLarge(t *testing.T) {
	body := bytes.Repeat([]byte{'x'}, 200<<10)
	p := pkt(0x30, s16("big"), body)
	h, raw, got, err := ReadPacket(bytes.NewReader(p), MaxPacketSize)
	if err != nil || h.Type != TypePublish || !bytes.Equal(raw, p) || len(got) != len(p)-4 {
		t.Fatalf("%+v %d %d %v", h, len(raw), len(got), err)
	}
	cut := append([]byte{0x30, 0xff, 0xff, 0xff, 0x07}, "abc"...) // declares 16 MiB
	_, raw, _, err = ReadPacket(bytes.NewReader(cut), MaxPacketSize)
	if err == nil || !bytes.Equal(raw, cut) || cap(raw) > 1<<20 {
		t.Fatalf("cut packet: %d bytes (cap %d), %v", len(raw), cap(raw), err)
	}
}

// TestServerKeepAlive: the Server Keep Alive of an MQTT 5 CONNACK, among
// its other properties; none in a CONNACK without it, in a 3.1.1 CONNACK,
// or in one whose properties overrun it.
func TestServerKeepAlive(t *testing.T) {
	for _, c := range []struct {
		body []byte
		secs uint16
		ok   bool
	}{
		{[]byte{0, 0, 3, 0x13, 0, 5}, 5, true},
		{[]byte{0, 0, 3, 0x13, 0, 0}, 0, true},
		{[]byte{0, 0, 16, 0x21, 0, 20, 0x22, 0, 10, 0x1f, 0, 2, 'o', 'k', 0x13, 1, 0x2c, 0x2a, 1}, 300, true},
		{[]byte{0, 0, 0}, 0, false},
		{[]byte{0, 0}, 0, false},                // MQTT 3.1.1
		{[]byte{0, 0, 5, 0x13, 0, 5}, 0, false}, // properties overrun the packet
		{[]byte{0, 0, 3, 0x17, 0, 5}, 0, false}, // not a CONNACK property
	} {
		secs, ok := ServerKeepAlive(c.body)
		if secs != c.secs || ok != c.ok {
			t.Errorf("% x: %d %v, want %d %v", c.body, secs, ok, c.secs, c.ok)
		}
	}
	if KeepAliveLimit(10) != 15*time.Second || KeepAliveLimit(0) != 0 {
		t.Errorf("KeepAliveLimit(10) = %v, (0) = %v", KeepAliveLimit(10), KeepAliveLimit(0))
	}
}

// FuzzServerKeepAlive: a broker's CONNACK body never crashes the reader.
func FuzzServerKeepAlive(f *testing.F) {
	f.Add([]byte{0, 0, 3, 0x13, 0, 5})
	f.Add([]byte{0, 0, 16, 0x21, 0, 20, 0x22, 0, 10, 0x1f, 0, 2, 'o', 'k', 0x13, 1, 0x2c, 0x2a, 1})
	f.Add([]byte{0, 0, 0x80, 0x80, 0x80, 0x80, 0x01})
	f.Fuzz(func(t *testing.T, body []byte) {
		ServerKeepAlive(body)
	})
}
