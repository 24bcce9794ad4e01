package transport

import (
	"encoding/binary"
	"errors"
	"sync/atomic"
)

// yamux (v0.1.2) answers each ping a peer asks for from a goroutine of its
// own, which waits up to ConnectionWriteTimeout for the answer to be
// queued. A peer that sends pings and reads nothing back therefore made
// this agent start a goroutine per 12 bytes it sent until keepalive gave
// up on the session, 15 s later: millions of goroutines, gigabytes, from
// one authenticated peer (TestPingFloodEndsSession). pingGuard follows the
// frames a session reads and the ping answers it writes, and ends the
// session whose peer has more than maxPingsOwed pings unanswered. A yamux
// peer waits for each answer before the next ping (keepalive and the RTT
// pinger: two at a time), so a live peer never owes that many.
//
// The cost on the data path is a few comparisons per read and per frame
// header written: no lock, no allocation; the atomic is per ping.

// maxPingsOwed bounds the pings a peer has asked for that are not answered.
const maxPingsOwed = 32

// errPingFlood ends a session whose peer asked for too many pings at once.
var errPingFlood = errors.New("mesh session: the peer asked for more than 32 pings unanswered")

// yamux frame types and flags (yamux's const.go) the guard reads.
const (
	yamuxTypePing = 2
	yamuxFlagSYN  = 1
	yamuxFlagACK  = 2
)

// pingGuard follows one session's yamux frames. read is called by the
// session's receive goroutine only, wrote by its send goroutine only.
type pingGuard struct {
	hdr  [yamuxHeaderLen]byte // a frame header read in part
	hdrN int
	body uint32       // bytes of a data frame's body still to be read
	owed atomic.Int32 // pings asked for and not answered
}

// read follows the frames in p, the next bytes the session read, and
// fails once the peer owes too many ping answers.
func (g *pingGuard) read(p []byte) error {
	for len(p) > 0 {
		if g.body > 0 {
			n := uint32(min(len(p), int(min(g.body, 1<<30))))
			g.body -= n
			p = p[n:]
			continue
		}
		n := copy(g.hdr[g.hdrN:], p)
		g.hdrN += n
		p = p[n:]
		if g.hdrN < yamuxHeaderLen {
			return nil
		}
		g.hdrN = 0
		switch g.hdr[1] {
		case yamuxTypeData:
			g.body = binary.BigEndian.Uint32(g.hdr[8:])
		case yamuxTypePing:
			if binary.BigEndian.Uint16(g.hdr[2:])&yamuxFlagSYN != 0 && g.owed.Add(1) > maxPingsOwed {
				return errPingFlood
			}
		}
	}
	return nil
}

// wroteHeader notes a frame header the session wrote (never a body).
func (g *pingGuard) wroteHeader(p []byte) {
	if len(p) == yamuxHeaderLen && p[1] == yamuxTypePing && binary.BigEndian.Uint16(p[2:])&yamuxFlagACK != 0 {
		g.owed.Add(-1)
	}
}
