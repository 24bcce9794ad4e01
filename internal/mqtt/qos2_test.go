package mqtt

import (
	"fmt"
	"strings"
	"testing"
)

// qos2Publish is the header and body of an MQTT 3.1.1 QoS 2 PUBLISH.
func qos2Publish(topic string, id uint16) (Header, []byte) {
	body := append([]byte{byte(len(topic) >> 8), byte(len(topic))}, topic...)
	return Header{Type: TypePublish, Flags: 4}, append(body, byte(id>>8), byte(id), 'x')
}

// release inspects a PUBREL for id on s and returns the topic it releases
// ("?" for none known).
func release(t *testing.T, s *Session, id uint16) string {
	t.Helper()
	a, err := s.Inspect(Header{Type: TypePubrel, Flags: 2}, []byte{byte(id >> 8), byte(id)})
	switch {
	case err != nil:
		t.Fatal(err)
	case a.Kind == KindUnknownRelease && a.PacketID == id:
		return "?"
	case a.Kind != KindRelease || a.PacketID != id || len(a.Topics) != 1:
		t.Fatalf("PUBREL %d: %+v", id, a)
	}
	return a.Topics[0]
}

// connection starts a connection of client cid on r.
func connection(r *Releases, cid string, clean bool) *Session {
	s := &Session{Version: 4}
	s.Resume(r, "ns/svc\x00id", Connect{Version: 4, ClientID: cid, CleanStart: clean})
	return s
}

func TestReleasesAcrossConnections(t *testing.T) {
	var r Releases
	publish := func(s *Session, topic string, id uint16) {
		t.Helper()
		if a, err := s.Inspect(qos2Publish(topic, id)); err != nil || a.Kind != KindPublish {
			t.Fatalf("PUBLISH: %+v %v", a, err)
		}
	}
	s := connection(&r, "c1", false)
	publish(s, "a/1", 1)
	publish(s, "a/2", 2)
	publish(s, "a/2b", 2) // id 2 reused before its PUBREL: the later topic
	publish(connection(&r, "c2", false), "b/1", 1)
	s = connection(&r, "c1", false) // a later connection of the session
	if got := release(t, s, 2); got != "a/2b" {
		t.Errorf("PUBREL 2 on the next connection releases %q, want a/2b", got)
	}
	if got := release(t, s, 2); got != "?" {
		t.Errorf("a second PUBREL 2 releases %q, want none known", got)
	}
	if r.Len() != 2 {
		t.Errorf("Len %d, want 2", r.Len())
	}
	// A clean start discards the session, as the broker does.
	connection(&r, "c1", true)
	if got := release(t, connection(&r, "c1", false), 1); got != "?" {
		t.Errorf("after a clean start, PUBREL 1 releases %q, want none known", got)
	}
	// Another client's are its own.
	if got := release(t, connection(&r, "c1", false), 1); got != "?" {
		t.Errorf("c1's PUBREL 1 releases %q", got)
	}
	if got := release(t, connection(&r, "c2", false), 1); got != "b/1" {
		t.Errorf("c2's PUBREL 1 releases %q, want b/1", got)
	}
	// A session that ends with its connection keeps nothing for later.
	publish(connection(&r, "c3", true), "c/1", 1)
	if got := release(t, connection(&r, "c3", false), 1); got != "?" || r.Len() != 0 {
		t.Errorf("a clean session's PUBREL 1 on a later connection releases %q (Len %d)", got, r.Len())
	}
}

func TestReleasesBounds(t *testing.T) {
	r := Releases{MaxEntries: 3}
	s := connection(&r, "c", false)
	for id := uint16(1); id <= 5; id++ {
		if _, err := s.Inspect(qos2Publish(fmt.Sprint("t/", id), id)); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	for id := uint16(1); id <= 5; id++ {
		got = append(got, release(t, s, id))
	}
	if strings.Join(got, " ") != "? ? t/3 t/4 t/5" {
		t.Errorf("past 3 entries the PUBRELs release %q, want the oldest dropped", got)
	}
	// Bytes: each message counts its topic, its session key and
	// releaseOverhead.
	key := len("ns/svc\x00id\x00c")
	r = Releases{MaxBytes: 2 * (10 + key + releaseOverhead)}
	s = connection(&r, "c", false)
	for id := uint16(1); id <= 3; id++ {
		s.Inspect(qos2Publish(fmt.Sprintf("topic/%04d", id), id))
	}
	if release(t, s, 1) != "?" || release(t, s, 2) != "topic/0002" || release(t, s, 3) != "topic/0003" {
		t.Error("past MaxBytes the oldest is not the one dropped")
	}
	// Many released messages do not grow the order past the live ones.
	for i := range 10000 {
		s.Inspect(qos2Publish("x", uint16(i%7+1)))
		release(t, s, uint16(i%7+1))
	}
	if len(r.order) > 64 {
		t.Errorf("%d refs kept for %d messages", len(r.order), r.Len())
	}
	// One session's topics are bounded as the aliases are: 0x93.
	s = connection(&Releases{}, "c", false)
	long := strings.Repeat("t", 60000)
	var err error
	for id := uint16(1); err == nil && id < 100; id++ {
		_, err = s.Inspect(qos2Publish(long, id))
	}
	if DisconnectReason(err) != 0x93 {
		t.Errorf("a session holding more than maxAliasBytes of topics: %v, want reason 0x93", err)
	}
}

func TestPersistentSession(t *testing.T) {
	for _, c := range []struct {
		name           string
		version, flags byte
		props          string // MQTT 5
		want           bool
	}{
		{"3.1.1 CleanSession 1", 4, 0x02, "", false},
		{"3.1.1 CleanSession 0", 4, 0x00, "", true},
		{"5 Clean Start 1, no expiry", 5, 0x02, "\x00", false},
		{"5 Clean Start 0, no expiry (a kept session resumed)", 5, 0x00, "\x00", true},
		{"5 Clean Start 1, expiry 300", 5, 0x02, "\x05\x11\x00\x00\x01\x2c", true},
	} {
		body := append([]byte("\x00\x04MQTT"), c.version, c.flags, 0, 30)
		body = append(append(body, c.props...), 0, 1, 'c')
		cn, err := ParseConnect(body)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got := PersistentSession(cn); got != c.want {
			t.Errorf("%s (expiry %d): persistent %v, want %v", c.name, cn.SessionExpiry, got, c.want)
		}
	}
}
