package relay

import (
	"io"
	"sync"
)

// toClient carries the broker's bytes to the client and, between two of
// the broker's packets, the relay's own answers (the PUBCOMP for a PUBREL
// it keeps from the broker). It follows the broker's packet boundaries by
// their fixed headers only, skipping each body unread: no copy, no
// allocation.
type toClient struct {
	mu sync.Mutex // guards the following
	c  io.Writer  // the client
	// open is set once the broker's CONNACK went to the client: the
	// relay's answers must come after it.
	open bool
	// lost: bytes that frame as no MQTT packet; answers are dropped.
	lost   bool
	hdr    int // fixed-header bytes of the current packet read (0: at a boundary, or in its body)
	rem    int // its remaining length so far
	body   int // bytes of its body still to come
	queued []byte
}

func (w *toClient) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, err := w.c.Write(p)
	w.follow(p[:n])
	if err == nil {
		err = w.flushLocked()
	}
	return n, err
}

// follow moves the packet boundary past p.
func (w *toClient) follow(p []byte) {
	for len(p) > 0 && !w.lost {
		switch {
		case w.body > 0:
			k := min(w.body, len(p))
			w.body -= k
			p = p[k:]
		case w.hdr == 0: // the type and flags byte
			w.hdr, w.rem = 1, 0
			p = p[1:]
		default: // the remaining length, 1 to 4 bytes
			b := p[0]
			p = p[1:]
			w.rem |= int(b&0x7f) << (7 * (w.hdr - 1))
			w.hdr++
			if b&0x80 == 0 {
				w.hdr, w.body = 0, w.rem
			} else if w.hdr > 4 {
				w.lost = true
			}
		}
	}
}

// flushLocked writes the queued answers if the broker's bytes so far end
// at a packet boundary after the CONNACK.
func (w *toClient) flushLocked() error {
	if len(w.queued) == 0 || !w.open || w.lost || w.hdr != 0 || w.body != 0 {
		return nil
	}
	b := w.queued
	w.queued = nil
	_, err := w.c.Write(b)
	return err
}

// connacked says the broker's CONNACK was written.
func (w *toClient) connacked() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.open = true
	w.flushLocked()
}

// answer writes packet b of the relay's own to the client between two of
// the broker's packets: now, or after the broker's packet being written.
func (w *toClient) answer(b []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.queued = append(w.queued, b...)
	w.flushLocked()
}
