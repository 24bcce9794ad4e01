package mqtt

import "sync"

// Releases keeps the topics of the QoS 2 messages clients published and
// have not released yet, across the connections of their persistent
// sessions. A broker may deliver a QoS 2 message only at its PUBREL
// (MQTT 5 §4.3.3 leaves it the choice; mosquitto does), and a client
// whose connection ended after the PUBREC sends that PUBREL on its next
// connection (3.1.1 §4.4, MQTT 5 §4.4): the PUBREL is authorized against
// the topic kept here. Its zero value is ready to use; it is safe for
// concurrent use.
type Releases struct {
	// MaxEntries bounds the messages kept, over all sessions (0: 65536);
	// past it the oldest are dropped.
	MaxEntries int
	// MaxBytes bounds the bytes they take, topic and session key plus
	// releaseOverhead per message, over all sessions (0: 16 MiB); past it
	// the oldest are dropped.
	MaxBytes int

	mu       sync.Mutex // guards the following
	sessions map[string]*pending
	order    []heldRef // oldest first; refs to messages since released or replaced are skipped
	entries  int
	bytes    int
	seq      uint64
}

// releaseOverhead is what a kept message counts toward MaxBytes beyond its
// topic and session key.
const releaseOverhead = 64

// pending is one session's unreleased QoS 2 messages.
type pending struct {
	topics map[uint16]heldTopic
	bytes  int // of the topics, bounded by maxAliasBytes
}

type heldTopic struct {
	topic string
	seq   uint64 // when it was kept: its ref in Releases.order carries the same
}

type heldRef struct {
	key string
	id  uint16
	seq uint64
}

// PersistentSession reports whether the broker keeps the session of cn
// beyond its connection, or resumes one kept from before: MQTT 3.1 and
// 3.1.1 CleanSession 0; MQTT 5 Clean Start 0 (a session kept is resumed)
// or a Session Expiry Interval above 0 (§3.1.2.11.2).
func PersistentSession(cn Connect) bool {
	return !cn.CleanStart || cn.Version == 5 && cn.SessionExpiry > 0
}

// Resume makes s, the session of the CONNECT cn, keep its unreleased QoS 2
// topics in r under identity and cn's client id, so that a later
// connection of the same session finds them. A clean start discards what
// was kept, as the broker discards the session; a session that is not
// persistent, or has no client id (the broker assigns one), keeps them on
// this connection only.
func (s *Session) Resume(r *Releases, identity string, cn Connect) {
	key := identity + "\x00" + cn.ClientID
	if cn.CleanStart {
		r.discard(key)
	}
	if PersistentSession(cn) && cn.ClientID != "" {
		s.store, s.key = r, key
	}
}

func (r *Releases) discard(key string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if p := r.sessions[key]; p != nil {
		for _, h := range p.topics {
			r.bytes -= len(h.topic) + len(key) + releaseOverhead
		}
		r.entries -= len(p.topics)
		delete(r.sessions, key)
	}
}

// hold keeps topic as that of the QoS 2 message id of session key, in
// place of one kept under the same id, and drops the oldest messages of
// any session past the bounds. It returns false, keeping nothing, when
// the session's topics would hold more than maxAliasBytes.
func (r *Releases) hold(key string, id uint16, topic string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.sessions[key]
	if p == nil {
		if r.sessions == nil {
			r.sessions = map[string]*pending{}
		}
		p = &pending{topics: map[uint16]heldTopic{}}
		r.sessions[key] = p
	}
	old, replaced := p.topics[id]
	if p.bytes+len(topic)-len(old.topic) > maxAliasBytes {
		return false
	}
	if replaced {
		r.entries--
		r.bytes -= len(old.topic) + len(key) + releaseOverhead
	}
	p.bytes += len(topic) - len(old.topic)
	r.seq++
	p.topics[id] = heldTopic{topic: topic, seq: r.seq}
	r.order = append(r.order, heldRef{key: key, id: id, seq: r.seq})
	r.entries++
	r.bytes += len(topic) + len(key) + releaseOverhead
	maxEntries, maxBytes := r.MaxEntries, r.MaxBytes
	if maxEntries <= 0 {
		maxEntries = 65536
	}
	if maxBytes <= 0 {
		maxBytes = 16 << 20
	}
	for r.entries > maxEntries || r.bytes > maxBytes {
		ref := r.order[0]
		r.order = r.order[1:]
		if q := r.sessions[ref.key]; q != nil && q.topics[ref.id].seq == ref.seq {
			r.takeLocked(ref.key, q, ref.id)
		}
	}
	if len(r.order) > 2*r.entries+64 { // refs to messages released since
		live := r.order[:0:0]
		for _, ref := range r.order {
			if q := r.sessions[ref.key]; q != nil && q.topics[ref.id].seq == ref.seq {
				live = append(live, ref)
			}
		}
		r.order = live
	}
	return true
}

// release takes the topic kept for message id of session key away.
func (r *Releases) release(key string, id uint16) (string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.sessions[key]
	if p == nil {
		return "", false
	}
	h, ok := p.topics[id]
	if ok {
		r.takeLocked(key, p, id)
	}
	return h.topic, ok
}

// takeLocked forgets message id of session key (p), and the session once
// it holds none.
func (r *Releases) takeLocked(key string, p *pending, id uint16) {
	h := p.topics[id]
	delete(p.topics, id)
	p.bytes -= len(h.topic)
	r.entries--
	r.bytes -= len(h.topic) + len(key) + releaseOverhead
	if len(p.topics) == 0 {
		delete(r.sessions, key)
	}
}

// Pubcomp returns the PUBCOMP with which the relay answers a PUBREL it
// keeps from the broker: MQTT 5 with reason 0x92 (Packet Identifier not
// found, §3.7.2.1), MQTT 3.1 and 3.1.1 with none to give.
func Pubcomp(version byte, id uint16) []byte {
	if version == 5 {
		return []byte{TypePubcomp << 4, 3, byte(id >> 8), byte(id), 0x92}
	}
	return []byte{TypePubcomp << 4, 2, byte(id >> 8), byte(id)}
}

// Len reports the messages r keeps, over all sessions.
func (r *Releases) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.entries
}
