package transport

import (
	"context"

	"github.com/hashicorp/yamux"
)

// openStreamContext is sess.OpenStream bounded by ctx: yamux's OpenStream
// takes no context and blocks while AcceptBacklog SYNs are unacknowledged
// (a peer that stopped taking streams), for up to StreamCloseTimeout.
func openStreamContext(ctx context.Context, sess *yamux.Session) (*yamux.Stream, error) {
	type opened struct {
		st  *yamux.Stream
		err error
	}
	ch := make(chan opened, 1)
	go func() {
		st, err := sess.OpenStream()
		ch <- opened{st, err}
	}()
	select {
	case o := <-ch:
		return o.st, o.err
	case <-ctx.Done():
		go func() { // the open ends with a slot or the session
			if o := <-ch; o.st != nil {
				o.st.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

// refuseStreams closes a client session whose peer opens a stream on it:
// only the client opens mesh streams, and an unaccepted stream would sit
// in yamux's backlog with up to its window of buffered data for the
// session's life (yamux v0.1.2 cannot reset one stream, and a closed one
// lingers until the peer closes it too).
func (c *Client) refuseStreams(meshAddr string, sess *yamux.Session) {
	defer c.wg.Done()
	st, err := sess.AcceptStream()
	if err != nil {
		return // the session ended
	}
	c.log.Warn("mesh: peer opened a stream on our session; closing it", "peer", meshAddr)
	st.Close()
	sess.Close()
}
