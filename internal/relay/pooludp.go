package relay

import (
	"context"
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
	var uc *UDPChannel
	via, err := p.eachRelay(ctx, "udp channel to "+peer, func(ctx context.Context, c *Client) error {
		var err error
		uc, err = c.BindUDP(ctx, peer)
		return err
	})
	return uc, via, err
}
