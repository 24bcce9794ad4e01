// Package syncproto is the sync protocol's logic without its I/O: one state
// machine for each end of a stream (Agent for internal/agent's syncOnce,
// Control for internal/control's serveStream). Each takes events (a frame
// received, a timer fired, a local change, the result of work it asked for)
// and returns an Output: the frames to send, effects for its driver to carry
// out, and an error when the stream must end. The machines read no socket and
// no clock and start no goroutine, so tests drive them frame by frame and
// compare transcripts, as etcd's raft tests do (see transcript_test.go).
//
// The frames are internal/wire's; this package adds which frame may come
// when, and what each one means for the other end. The drivers own the
// connection, the timers and the state of the agent or the server (the
// configuration, the registry), and step the machine from their goroutines
// under one lock.
package syncproto

import (
	"fmt"
	"time"

	"github.com/fogmesh/fogmesh/internal/wire"
)

// Event is an input of a machine: a frame received (Recv), a frame its
// driver sends (Send), a timer (Tick), a local change or the result of an
// effect. Agent.Step and Control.Step list the events of each end.
type Event interface{ isEvent() }

// Effect is work a machine asks its driver to do: apply an update, record
// a heartbeat, answer a request. Agent.Step and Control.Step list them.
type Effect interface{ isEffect() }

// Output is what a machine asks of its driver after one step.
type Output struct {
	// Send are frames to write, in order.
	Send []*wire.Message
	// Effects are work for the driver, in order.
	Effects []Effect
	// Err, when set, ends the stream: the driver writes Send (best effort,
	// e.g. a NACK or a refusal) and closes the connection with this error.
	Err error
}

func (Recv) isEvent()     {}
func (Send) isEvent()     {}
func (Applied) isEvent()  {}
func (Tick) isEvent()     {}
func (Local) isEvent()    {}
func (Sessions) isEvent() {}
func (Admitted) isEvent() {}
func (Reject) isEvent()   {}
func (Widen) isEvent()    {}

func (Connected) isEffect()    {}
func (Apply) isEffect()        {}
func (PeerLoads) isEffect()    {}
func (AuditAck) isEffect()     {}
func (TrustUpdate) isEffect()  {}
func (CertIssued) isEffect()   {}
func (SVIDIssued) isEffect()   {}
func (Refused) isEffect()      {}
func (Admit) isEffect()        {}
func (Subscribed) isEffect()   {}
func (ScopeAdd) isEffect()     {}
func (Acked) isEffect()        {}
func (Nacked) isEffect()       {}
func (Heartbeat) isEffect()    {}
func (SessionsIn) isEffect()   {}
func (LocalIn) isEffect()      {}
func (AuditIn) isEffect()      {}
func (RenewIn) isEffect()      {}
func (SVIDIn) isEffect()       {}
func (BadFrame) isEffect()     {}
func (OldAgent) isEffect()     {}
func (Unauthorized) isEffect() {}

// welcomeTimeout bounds the wait for the answer to hello.
const welcomeTimeout = 10 * time.Second

// readTimeout is how long either end waits for the next frame once the
// stream runs. The control plane answers every heartbeat, so silence for
// three intervals (at least 2 s: a GC pause or a busy machine must not cut a
// short interval's stream) means the link is gone even if no RST ever
// arrives.
func readTimeout(hb time.Duration) time.Duration { return max(3*hb, 2*time.Second) }

// describe names a frame for errors.
func describe(m *wire.Message) string {
	if m == nil {
		return "nil frame"
	}
	return fmt.Sprintf("%q", m.Type)
}
