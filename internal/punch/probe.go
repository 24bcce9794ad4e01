package punch

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
)

// Probe wire format (ProbeSize bytes, big-endian):
//
//	0   magic "\x00FMP"  (first byte's top two bits 0: quic-go hands it to
//	                      ReadNonQUICPacket instead of parsing it as QUIC)
//	4   version 1
//	5   kind: 1 request, 2 response
//	6   sender's role: 0 the controlling node (lower ID), 1 the other
//	7   flags, 0
//	8   session: 8 bytes derived from the session key (names the
//	    introduction without revealing its nonce)
//	16  seq: the sender's counter (request) or the echoed request's (response)
//	24  MAC: HMAC-SHA256(key, bytes 0..23), first 16 bytes
//
// The key is derived from the introduction's nonce, which only the two
// nodes and the relay know (it reached them over their mTLS control
// connections), and both node IDs, so a probe is refused unless it was
// made by a party to this introduction. A response is never larger than
// the request it answers (no amplification).
const (
	ProbeSize    = 40
	probeVersion = 1
	macOffset    = 24
	macLen       = 16
)

const probeMagic = "\x00FMP"

// Probe kinds.
const (
	KindRequest  byte = 1
	KindResponse byte = 2
)

// Probe is a decoded probe, before its MAC is checked (Key.Verify).
type Probe struct {
	Kind    byte
	Role    byte
	Session [8]byte
	Seq     uint64
	MAC     [macLen]byte
}

// Reasons a probe is refused; Stats counts them.
var (
	ErrProbeSize    = errors.New("punch: probe of the wrong size")
	ErrNotProbe     = errors.New("punch: not a probe")
	ErrProbeVersion = errors.New("punch: unknown probe version")
	ErrProbeField   = errors.New("punch: bad probe field")
)

// ParseProbe decodes b, refusing anything that is not exactly a probe.
// It allocates nothing and never reads beyond b.
func ParseProbe(b []byte) (Probe, error) {
	var p Probe
	if len(b) >= 4 && string(b[:4]) != probeMagic {
		return p, ErrNotProbe
	}
	if len(b) != ProbeSize {
		return p, fmt.Errorf("%w: %d bytes, want %d", ErrProbeSize, len(b), ProbeSize)
	}
	if b[4] != probeVersion {
		return p, fmt.Errorf("%w: %d", ErrProbeVersion, b[4])
	}
	p.Kind, p.Role = b[5], b[6]
	if p.Kind != KindRequest && p.Kind != KindResponse {
		return p, fmt.Errorf("%w: kind %d", ErrProbeField, p.Kind)
	}
	if p.Role > 1 || b[7] != 0 {
		return p, fmt.Errorf("%w: role %d flags %d", ErrProbeField, p.Role, b[7])
	}
	copy(p.Session[:], b[8:16])
	p.Seq = binary.BigEndian.Uint64(b[16:24])
	copy(p.MAC[:], b[macOffset:])
	return p, nil
}

// Key authenticates the probes of one introduction.
type Key struct {
	mac     [sha256.Size]byte
	session [8]byte
}

// NewKey derives the key of the introduction with nonce (the relay's hex
// nonce) between nodes a and b (SPIFFE IDs, either order).
func NewKey(nonce, a, b string) (Key, error) {
	raw, err := hex.DecodeString(nonce)
	if err != nil || len(raw) < 16 {
		return Key{}, fmt.Errorf("punch: nonce %q: want at least 16 hex bytes", nonce)
	}
	if a > b {
		a, b = b, a
	}
	var k Key
	h := hmac.New(sha256.New, raw)
	h.Write([]byte("fogmesh-punch/1\x00" + a + "\x00" + b))
	copy(k.mac[:], h.Sum(nil))
	s := hmac.New(sha256.New, k.mac[:])
	s.Write([]byte("session"))
	copy(k.session[:], s.Sum(nil))
	return k, nil
}

// Session is the session field of this key's probes.
func (k *Key) Session() [8]byte { return k.session }

func (k *Key) sum(head []byte) [macLen]byte {
	h := hmac.New(sha256.New, k.mac[:])
	h.Write(head)
	var out [macLen]byte
	copy(out[:], h.Sum(nil))
	return out
}

// Append appends a probe of kind from role with seq to b.
func (k *Key) Append(b []byte, kind, role byte, seq uint64) []byte {
	start := len(b)
	b = append(b, probeMagic...)
	b = append(b, probeVersion, kind, role, 0)
	b = append(b, k.session[:]...)
	b = binary.BigEndian.AppendUint64(b, seq)
	mac := k.sum(b[start:])
	return append(b, mac[:]...)
}

// Verify reports whether raw (a probe ParseProbe accepted as p) was made
// with this key.
func (k *Key) Verify(p Probe, raw []byte) bool {
	if len(raw) != ProbeSize || p.Session != k.session {
		return false
	}
	want := k.sum(raw[:macOffset])
	return hmac.Equal(want[:], p.MAC[:])
}

// replayWindow accepts each request sequence number once: anything at or
// below the highest seen minus its width, or seen before, is a replay.
// Probes to several candidates are sent in a burst and may arrive a little
// out of order, which the window's width absorbs.
type replayWindow struct {
	top  uint64 // highest accepted seq; 0: none yet (seqs start at 1)
	bits uint64 // bit i: top-i was accepted
}

// accept records seq and reports whether it is fresh.
func (w *replayWindow) accept(seq uint64) bool {
	switch {
	case seq == 0:
		return false
	case seq > w.top:
		shift := seq - w.top
		if shift >= 64 {
			w.bits = 0
		} else {
			w.bits <<= shift
		}
		w.bits |= 1
		w.top = seq
		return true
	case w.top-seq >= 64:
		return false
	}
	bit := uint64(1) << (w.top - seq)
	if w.bits&bit != 0 {
		return false
	}
	w.bits |= bit
	return true
}
