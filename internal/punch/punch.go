// Package punch opens a direct UDP path between two nodes behind NATs
// (issue 12): each gathers its candidates (the socket's local addresses
// and its reflexive address as the relay sees it), the relay introduces
// them to each other (both get the other's candidates under one nonce),
// and both send small authenticated probes to every candidate of the
// other at a short interval and answer the other's probes (simultaneous
// open). A request answered proves a pair works both ways; the first such
// pair wins, and the mesh's QUIC carrier (transport.QUICClient and
// QUICServer) then runs over the same socket to that address: the node
// whose ID sorts first dials, the other serves. If no pair answers within
// Config.Timeout (1.5 s: a symmetric NAT, UDP blocked), Punch fails with
// ErrNoPath and the caller uses the relay.
//
// Probes carry an HMAC keyed by the introduction's nonce and both node
// IDs: a probe from anyone not party to the introduction, a replayed
// request, our own probe come back (overlapping subnets) or an answer to
// nothing we sent is refused and counted (Stats). The relay knows the
// nonce too, so probes only choose the address; the QUIC handshake's mTLS
// (the dialer checks the peer's certificate names Path.Peer) authenticates
// the node itself.
//
// Probes are read and written through the socket's quic.Transport
// (ReadNonQUICPacket, WriteTo), so punching, keepalives and QUIC share one
// socket and one NAT mapping. The package knows nothing of the agent.
package punch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/fogmesh/fogmesh/internal/relay"
)

// Defaults of Config.
const (
	// DefaultTimeout leaves a caller with a 2 s budget time to fall back
	// to the relay.
	DefaultTimeout  = 1500 * time.Millisecond
	DefaultInterval = 25 * time.Millisecond
	// DefaultKeepAlive is below the 30 s after which common NATs forget an
	// idle UDP mapping.
	DefaultKeepAlive = 20 * time.Second
	// DefaultGatherTimeout bounds the wait for the relay's reflexive
	// answer: no answer by then means UDP does not get out.
	DefaultGatherTimeout = time.Second
)

const (
	maxCandidates  = 32  // per session, the relay's and triggered ones together
	maxOutstanding = 512 // unanswered requests remembered per session
)

// Errors of Punch and Gather.
var (
	// ErrNoPath: no candidate pair answered within the deadline.
	ErrNoPath = errors.New("punch: no direct UDP path")
	// ErrIntroReplay: an introduction whose nonce was already punched.
	ErrIntroReplay = errors.New("punch: introduction replayed")
	// ErrUDPBlocked: the relay's UDP port did not answer (UDP does not
	// get out of this site); only the relay's TCP path is left.
	ErrUDPBlocked = errors.New("punch: no reflexive UDP address")
)

// Config configures a Puncher. Transport and Self are required.
type Config struct {
	// Transport is the QUIC endpoint of the node's UDP socket
	// (transport.NewQUICTransport); the QUIC carrier uses it too.
	Transport *quic.Transport
	// Self is this node's SPIFFE ID (relay.Client.Hello().Node).
	Self string
	// Timeout bounds one Punch. Default DefaultTimeout.
	Timeout time.Duration
	// Interval is the pause between two rounds of probes. Default
	// DefaultInterval.
	Interval time.Duration
	// KeepAlive is how often a punched Path probes its peer to hold the
	// NAT mappings. Default DefaultKeepAlive.
	KeepAlive time.Duration
	Logger    *slog.Logger
}

// Stats counts probes; every refusal has its reason.
type Stats struct {
	Sent      uint64 // requests sent
	Answered  uint64 // peer requests answered
	Responses uint64 // responses to our requests accepted

	NotProbe       uint64 // non-QUIC datagrams that are not probes
	Malformed      uint64 // probe magic but bad size, version or field
	UnknownSession uint64 // no punch in progress or path open under that session
	BadMAC         uint64 // forged, or made with another introduction's key
	Replayed       uint64 // a request seq seen before
	Reflected      uint64 // our own probe came back (overlapping subnets)
	Unsolicited    uint64 // a response to no outstanding request of ours
	IntroReplayed  uint64 // introductions refused as replays
	// NoncesEvicted counts introductions' nonces forgotten before
	// nonceTTL to make room for newer ones (nonceStore): a peer
	// introduced in a loop.
	NoncesEvicted uint64

	// CandidateRefused counts introduced addresses not probed (loopback,
	// link-local, multicast, unspecified: refuseCandidate).
	CandidateRefused uint64
	// OverBudget counts probes not sent: the introduction's or the
	// socket's per-second budget was spent (maxProbesPerPunch,
	// maxProbesPerSecond).
	OverBudget uint64
}

// Puncher punches paths from one UDP socket.
type Puncher struct {
	cfg    Config
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	bound netip.Addr // the socket's address, for refuseCandidate

	mu       sync.Mutex // guards the following and every session
	sessions map[[8]byte]*session
	nonces   nonceStore // of the introductions punched (nonces.go)
	stats    Stats
	loggedAt time.Time  // of the last refusal logged (noteRefusalLocked)
	rate     rateBudget // probes of punches in this second
}

// session is one introduction's probing state.
type session struct {
	key    Key
	role   byte // 0: we sort first and dial
	peer   string
	cands  []*candidate
	budget int // probes left of maxProbesPerPunch
	seq    uint64
	sent   map[uint64]sentProbe // outstanding requests by seq
	window replayWindow
	won    chan struct{} // closed when a request of ours is answered
	winner netip.AddrPort
	rtt    time.Duration
	last   time.Time // last valid probe from the peer
}

type sentProbe struct {
	to netip.AddrPort
	at time.Time
}

// New checks cfg and starts reading probes from the transport.
func New(cfg Config) (*Puncher, error) {
	if cfg.Transport == nil {
		return nil, errors.New("punch: config: no Transport")
	}
	if cfg.Self == "" {
		return nil, errors.New("punch: config: no Self")
	}
	if cfg.Timeout < 0 || cfg.Interval < 0 || cfg.KeepAlive < 0 {
		return nil, errors.New("punch: config: negative duration")
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Interval == 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = DefaultKeepAlive
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Puncher{cfg: cfg, log: cfg.Logger, ctx: ctx, cancel: cancel, done: make(chan struct{}),
		sessions: map[[8]byte]*session{}}
	if ua, ok := cfg.Transport.Conn.LocalAddr().(*net.UDPAddr); ok {
		p.bound = ua.AddrPort().Addr().Unmap()
	}
	// quic-go drops non-QUIC datagrams until ReadNonQUICPacket is first
	// called, and the read loop's first call may come after the first
	// answers arrive on a busy machine. One call with a context already
	// done makes the transport queue them from now on.
	now, stop := context.WithCancel(ctx)
	stop()
	buf := make([]byte, 1500)
	if n, from, err := cfg.Transport.ReadNonQUICPacket(now, buf); err == nil {
		p.dispatch(buf[:n], from)
	}
	go p.readLoop(buf)
	return p, nil
}

// Close stops reading probes; open Paths stop answering. It leaves the
// transport open.
func (p *Puncher) Close() error {
	p.cancel()
	<-p.done
	return nil
}

// Stats returns the counters so far.
func (p *Puncher) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stats
}

// Connect asks the relay to introduce this node to peer with cands (this
// node's own candidates, Candidates.Strings) and punches to the peer's.
func (p *Puncher) Connect(ctx context.Context, rc *relay.Client, peer string, cands []string) (*Path, error) {
	in, err := rc.Introduce(ctx, peer, cands)
	if err != nil {
		return nil, fmt.Errorf("punch: introduce to %s: %w", peer, err)
	}
	return p.Punch(ctx, in)
}

// Accept takes the next introduction another node asked the relay for and
// punches to it.
func (p *Puncher) Accept(ctx context.Context, rc *relay.Client) (*Path, error) {
	select {
	case in := <-rc.Introductions():
		return p.Punch(ctx, in)
	case <-rc.Done():
		return nil, fmt.Errorf("punch: relay connection closed: %w", rc.Err())
	case <-ctx.Done():
		return nil, fmt.Errorf("punch: wait for an introduction: %w", ctx.Err())
	}
}

// Punch probes the candidates of an introduction until a request of ours
// is answered (the Path) or Config.Timeout passes (ErrNoPath).
func (p *Puncher) Punch(ctx context.Context, in relay.Introduced) (*Path, error) {
	start := time.Now()
	if in.Peer == p.cfg.Self {
		return nil, fmt.Errorf("punch: introduced to ourselves (%s)", in.Peer)
	}
	key, err := NewKey(in.Nonce, p.cfg.Self, in.Peer)
	if err != nil {
		return nil, err
	}
	s := &session{key: key, peer: in.Peer, sent: map[uint64]sentProbe{}, won: make(chan struct{}), budget: maxProbesPerPunch}
	if p.cfg.Self > in.Peer {
		s.role = 1
	}
	var refused []string
	for _, c := range in.Candidates {
		ap, err := netip.ParseAddrPort(c)
		if err != nil || ap.Port() == 0 {
			continue
		}
		ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		if why := refuseCandidate(ap.Addr(), p.bound); why != "" {
			refused = append(refused, why+" "+ap.String())
			continue
		}
		if s.candidate(ap) == nil && len(s.cands) < maxCandidates {
			s.cands = append(s.cands, &candidate{addr: ap})
		}
	}
	if len(refused) > 0 {
		p.mu.Lock()
		p.stats.CandidateRefused += uint64(len(refused))
		p.noteRefusalLocked("candidate_scope", in.Peer+": "+strings.Join(refused, ", "))
		p.mu.Unlock()
	}
	if err := p.register(in.Nonce, s, start); err != nil {
		return nil, err
	}

	ctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
	defer cancel()
	tick := time.NewTicker(p.cfg.Interval)
	defer tick.Stop()
	for {
		p.probeAll(s)
		select {
		case <-s.won:
			return p.newPath(s), nil
		case <-tick.C:
		case <-ctx.Done():
			p.unregister(s)
			select {
			case <-s.won: // answered at the last moment
				p.register(in.Nonce, s, time.Time{})
				return p.newPath(s), nil
			default:
			}
			p.mu.Lock()
			n := len(s.cands)
			p.mu.Unlock()
			return nil, fmt.Errorf("%w to %s: no answer from its %d candidates within %s (symmetric NAT or UDP blocked on the way; use the relay): %w",
				ErrNoPath, in.Peer, n, time.Since(start).Round(time.Millisecond), ctx.Err())
		}
	}
}

// register adds s under its session; a nonce already used is a replay.
// A zero now re-registers s after a late answer.
func (p *Puncher) register(nonce string, s *session, now time.Time) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !now.IsZero() {
		replay, evicted := p.nonces.add(s.peer, nonce, now)
		if replay {
			p.stats.IntroReplayed++
			p.noteRefusalLocked("introduction_replayed", s.peer)
			return fmt.Errorf("%w: nonce %s from %s", ErrIntroReplay, nonce, s.peer)
		}
		p.stats.NoncesEvicted += uint64(evicted)
	}
	p.sessions[s.key.Session()] = s
	return nil
}

func (p *Puncher) unregister(s *session) {
	p.mu.Lock()
	if p.sessions[s.key.Session()] == s {
		delete(p.sessions, s.key.Session())
	}
	p.mu.Unlock()
}

// probeAll sends one request to every candidate of s that is due
// (candidate.due), within the introduction's and the socket's budgets.
func (p *Puncher) probeAll(s *session) {
	now := time.Now()
	var to []netip.AddrPort
	p.mu.Lock()
	for _, c := range s.cands {
		if !c.due(now) {
			continue
		}
		if s.budget <= 0 || !p.rate.take(now, maxProbesPerSecond) {
			p.stats.OverBudget++
			p.noteRefusalLocked("probe_budget", s.peer)
			continue
		}
		s.budget--
		c.probed(now, p.cfg.Interval)
		to = append(to, c.addr)
	}
	p.mu.Unlock()
	for _, c := range to {
		p.probe(s, c)
	}
}

// candidate returns s's candidate at a, or nil.
func (s *session) candidate(a netip.AddrPort) *candidate {
	for _, c := range s.cands {
		if c.addr == a {
			return c
		}
	}
	return nil
}

// heardLocked notes a valid probe of the peer's from a: a candidate it
// came from is probed every round again; a new address is a triggered
// check (the peer's packets come from a NAT mapping made for us).
func (s *session) heardLocked(a netip.AddrPort) {
	if c := s.candidate(a); c != nil {
		c.heard = true
	} else if len(s.cands) < maxCandidates {
		s.cands = append(s.cands, &candidate{addr: a, heard: true})
	}
}

// probe sends one request to c.
func (p *Puncher) probe(s *session, c netip.AddrPort) {
	p.mu.Lock()
	s.seq++
	seq := s.seq
	s.sent[seq] = sentProbe{to: c, at: time.Now()}
	if len(s.sent) > maxOutstanding {
		for q := range s.sent {
			if q+maxOutstanding < seq {
				delete(s.sent, q)
			}
		}
	}
	p.stats.Sent++
	p.mu.Unlock()
	b := s.key.Append(make([]byte, 0, ProbeSize), KindRequest, s.role, seq)
	if _, err := p.cfg.Transport.WriteTo(b, net.UDPAddrFromAddrPort(c)); err != nil {
		p.log.Debug("punch: probe not sent", "to", c, "err", err)
	}
}

// readLoop dispatches the socket's non-QUIC datagrams until Close.
func (p *Puncher) readLoop(buf []byte) {
	defer close(p.done)
	for {
		n, from, err := p.cfg.Transport.ReadNonQUICPacket(p.ctx, buf)
		if err != nil {
			if p.ctx.Err() == nil {
				p.log.Debug("punch: transport closed", "err", err)
			}
			return
		}
		p.dispatch(buf[:n], from)
	}
}

// dispatch handles one datagram from a UDP address.
func (p *Puncher) dispatch(b []byte, from net.Addr) {
	if ua, ok := from.(*net.UDPAddr); ok {
		ap := ua.AddrPort()
		p.handle(b, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
	}
}

// handle checks one datagram and answers or records it.
func (p *Puncher) handle(b []byte, from netip.AddrPort) {
	if reply := p.check(b, from); reply != nil {
		if _, err := p.cfg.Transport.WriteTo(reply, net.UDPAddrFromAddrPort(from)); err != nil {
			p.log.Debug("punch: answer not sent", "to", from, "err", err)
		}
	}
}

// check records one datagram and returns the answer to send, if any.
func (p *Puncher) check(b []byte, from netip.AddrPort) []byte {
	pr, err := ParseProbe(b)
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		if errors.Is(err, ErrNotProbe) {
			p.stats.NotProbe++
		} else {
			p.stats.Malformed++
			p.noteRefusalLocked("malformed", from.String())
		}
		return nil
	}
	s := p.sessions[pr.Session]
	switch {
	case s == nil:
		p.stats.UnknownSession++
		return nil
	case !s.key.Verify(pr, b):
		p.stats.BadMAC++
		p.noteRefusalLocked("bad_mac", from.String())
		return nil
	case pr.Role == s.role:
		p.stats.Reflected++
		return nil
	}
	now := time.Now()
	if pr.Kind == KindRequest {
		if !s.window.accept(pr.Seq) {
			p.stats.Replayed++
			p.noteRefusalLocked("replayed", from.String())
			return nil
		}
		s.last = now
		p.stats.Answered++
		s.heardLocked(from)
		return s.key.Append(make([]byte, 0, ProbeSize), KindResponse, s.role, pr.Seq)
	}
	sent, ok := s.sent[pr.Seq]
	if !ok || sent.to != from {
		p.stats.Unsolicited++
		p.noteRefusalLocked("unsolicited", from.String())
		return nil
	}
	delete(s.sent, pr.Seq)
	s.last = now
	p.stats.Responses++
	s.heardLocked(from)
	select {
	case <-s.won:
	default:
		s.winner, s.rtt = from, now.Sub(sent.at)
		close(s.won)
	}
	return nil
}
