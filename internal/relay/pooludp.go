package relay

import (
	"context"
	"errors"
	"fmt"
)

// PoolUDPIncoming is a UDP channel another agent bound to this one
// through one of the pool's relays; Open takes it (see udpclient.go).
type PoolUDPIncoming struct {
	UDPIncoming
	// Relay is the address of the relay it came through.
	Relay string
}

// UDPIncoming delivers the UDP channels other agents bind to this one,
// through any relay (full channel: dropped and counted with the incoming
// sessions; the relay then closes the channel).
func (p *Pool) UDPIncoming() <-chan PoolUDPIncoming { return p.udpIn }

// BindUDP opens a UDP channel to peer (a node SPIFFE ID) through the home
// relay, or, if that fails, through the other connected relays by RTT,
// each attempt bounded by DialTimeout, as DialPeer does. It returns the
// channel and the relay's address. A site that drops UDP fails at every
// relay: give BindUDP a ctx as short as the fallback to TCP allows.
func (p *Pool) BindUDP(ctx context.Context, peer string) (*UDPChannel, string, error) {
	for {
		order, ch := p.dialOrder()
		var errs []error
		for _, r := range order {
			c := r.clientNow(p)
			if c == nil {
				continue
			}
			actx, cancel := context.WithTimeout(ctx, p.cfg.DialTimeout)
			uc, err := c.BindUDP(actx, peer)
			cancel()
			if err == nil {
				return uc, r.addr, nil
			}
			var re *Error
			if errors.As(err, &re) && final(re.Reason) {
				return nil, r.addr, err
			}
			errs = append(errs, err)
			if ctx.Err() != nil {
				break
			}
		}
		if len(errs) > 0 {
			return nil, "", fmt.Errorf("relay pool: udp channel to %s: %w", peer, errors.Join(errs...))
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, "", fmt.Errorf("relay pool: udp channel to %s: %w (%w)", peer, ErrNoRelay, ctx.Err())
		case <-p.ctx.Done():
			return nil, "", fmt.Errorf("relay pool: udp channel to %s: closed: %w", peer, ErrNoRelay)
		}
	}
}
