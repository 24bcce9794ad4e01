package meshdns

import (
	"context"
	"fmt"
	"net"

	"github.com/miekg/dns"
)

// forward sends req unchanged to the upstreams in order and returns the
// first usable answer, with req's ID. An upstream answering SERVFAIL or
// REFUSED is passed over for the next one; if all do, the last such answer
// is relayed. If no upstream answers at all, forward returns SERVFAIL. A
// client over its rate or its share of forwards in flight (h.lim) gets at
// once an empty truncated reply over UDP, REFUSED over TCP.
func (h *handler) forward(ctx context.Context, from net.Addr, req *dns.Msg) (*dns.Msg, result) {
	if len(h.upstreams) == 0 {
		return serverFailure(req), resultServFail
	}
	client := clientAddr(from)
	_, tcp := from.(*net.TCPAddr)
	l := &h.lim[0]
	if tcp {
		l = &h.lim[1]
	}
	if !l.rate.allow(client) || !l.inFlight.acquire(client, maxForwards/8) {
		// Per query, so debug only: a flood is seen in the counter.
		h.log.Debug("meshdns: client over its forwarding rate or share", "client", client, "tcp", tcp, "name", req.Question[0].Name)
		resp := new(dns.Msg)
		if tcp {
			resp.SetRcode(req, dns.RcodeRefused)
		} else {
			// Truncated and empty: a real client asks again over TCP,
			// whose source cannot be spoofed and whose budget is apart,
			// so spoofed UDP floods cannot deny it names (RRL's "slip").
			resp.SetReply(req)
			resp.Truncated = true
		}
		return resp, resultRateLimited
	}
	defer l.inFlight.release(client)
	select {
	case h.forwardSem <- struct{}{}:
		defer func() { <-h.forwardSem }()
	default:
		h.log.Debug("meshdns: too many forwards in flight", "name", req.Question[0].Name)
		return serverFailure(req), resultServFail
	}

	var fallback *dns.Msg
	for _, up := range h.upstreams {
		resp, err := h.exchange(ctx, req, up)
		if err != nil {
			h.log.Debug("meshdns: forward failed", "name", req.Question[0].Name, "err", err)
			if ctx.Err() != nil {
				break
			}
			continue
		}
		resp.Id = req.Id
		if resp.Rcode == dns.RcodeServerFailure || resp.Rcode == dns.RcodeRefused {
			fallback = resp
			continue
		}
		return resp, resultForward
	}
	if fallback != nil {
		return fallback, resultForward
	}
	return serverFailure(req), resultServFail
}

// exchange sends req to upstream over UDP, and again over TCP if the UDP
// answer was truncated. Each exchange takes at most h.upstreamTimeout;
// canceling ctx aborts it.
func (h *handler) exchange(ctx context.Context, req *dns.Msg, upstream string) (*dns.Msg, error) {
	resp, err := h.exchangeNet(ctx, "udp", req, upstream)
	if err != nil || !resp.Truncated {
		return resp, err
	}
	return h.exchangeNet(ctx, "tcp", req, upstream)
}

func (h *handler) exchangeNet(ctx context.Context, network string, req *dns.Msg, upstream string) (*dns.Msg, error) {
	c := &dns.Client{Net: network, Timeout: h.upstreamTimeout}
	co, err := c.DialContext(ctx, upstream)
	if err != nil {
		return nil, fmt.Errorf("upstream %s/%s: dial: %w", upstream, network, err)
	}
	defer co.Close()
	// dns.Client obeys only the deadline of ctx, not its cancellation;
	// closing the conn unblocks the exchange.
	stop := context.AfterFunc(ctx, func() { co.Close() })
	defer stop()
	resp, _, err := c.ExchangeWithConnContext(ctx, req, co)
	if err != nil {
		return nil, fmt.Errorf("upstream %s/%s: %w", upstream, network, err)
	}
	return resp, nil
}

// serverFailure returns a SERVFAIL reply to req.
func serverFailure(req *dns.Msg) *dns.Msg {
	resp := new(dns.Msg)
	resp.SetRcode(req, dns.RcodeServerFailure)
	return resp
}
