package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fogmesh/fogmesh/internal/atomicfile"
	"github.com/fogmesh/fogmesh/internal/gossip"
)

// initGossip starts the liveness gossip member if Config.GossipAddr is set.
func (a *Agent) initGossip() error {
	if a.cfg.GossipAddr == "" {
		return nil
	}
	gc := gossip.Config{Name: a.cfg.Node.Name, BindAddr: a.cfg.GossipAddr,
		OnChange: a.onGossipEvent, Allow: a.allowGossip, Logger: a.log.With("sub", "gossip")}
	if a.ident != nil {
		if gc.SecretKey = a.ident.gossipKey; gc.SecretKey == nil && a.ident.gossipKeyErr != nil {
			return &ConfigError{Err: fmt.Errorf("agent: gossip: the trust's gossip key is unusable (%v), and gossip does not run unencrypted in a mesh that encrypts it: start with gossip off until the control plane has sent its trust again (trust.json is rewritten), or join again", a.ident.gossipKeyErr)}
		} else if gc.SecretKey == nil {
			a.log.Warn("agent: the control plane sent no gossip key; liveness gossip runs unencrypted")
		}
	}
	kept := a.keptGossipAddr()
	if kept != "" {
		gc.BindAddr = kept
	}
	g, err := gossip.New(gc)
	if err != nil && kept != "" { // the port kept is taken: any
		a.log.Warn("agent: the gossip port of the last run is taken; gossiping on another", "addr", kept, "err", err)
		gc.BindAddr = a.cfg.GossipAddr
		g, err = gossip.New(gc)
	}
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	a.keepGossipAddr(g.Addr())
	a.gossip = g
	a.gv.mu.Lock()
	a.gv.g = g
	a.gv.mu.Unlock()
	a.self.Spec.GossipAddress = g.Addr()
	return nil
}

// gossipPortFile keeps, in the state dir, the port an agent whose
// gossipAddr asks for any port (":0") gossips on, for its next run: its
// peers hear a member only at its registered gossip address
// (allowGossip), so on a new port a restarted agent would go unheard,
// and stay dead to them, until the control plane registered the new one:
// for as long as the site is cut off from it.
const gossipPortFile = "gossip-port"

// keptGossipAddr returns gossipAddr with the port of the last run if
// gossipAddr asks for any port and the state dir kept one ("" if not).
func (a *Agent) keptGossipAddr() string {
	host, port, err := net.SplitHostPort(a.cfg.GossipAddr)
	if err != nil || port != "0" || a.cfg.StateDir == "" {
		return ""
	}
	path := filepath.Join(a.cfg.StateDir, gossipPortFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) { // a first run
		return ""
	}
	var p uint64
	if err == nil && len(b) > 32 { // a port and a newline; not logged whole
		err = fmt.Errorf("%d bytes", len(b))
	}
	if err == nil {
		if p, err = strconv.ParseUint(strings.TrimSpace(string(b)), 10, 16); err == nil && p == 0 {
			err = errors.New("port 0")
		}
	}
	if err != nil {
		a.log.Warn("agent: the gossip port of the last run is unreadable; gossiping on another", "file", path, "err", err)
		return ""
	}
	return net.JoinHostPort(host, strconv.FormatUint(p, 10))
}

// keepGossipAddr keeps the port of addr, where gossip runs, for the next
// run (when gossipAddr asks for any port).
func (a *Agent) keepGossipAddr(addr string) {
	if _, port, err := net.SplitHostPort(a.cfg.GossipAddr); err != nil || port != "0" || a.cfg.StateDir == "" {
		return
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return
	}
	if err := atomicfile.Write(filepath.Join(a.cfg.StateDir, gossipPortFile), []byte(port+"\n"), 0o600); err != nil {
		a.log.Warn("agent: the gossip port is not kept for the next run", "err", err)
	}
}

// gossipVerdicts checks gossip's word on the site's peers. Whoever holds
// the gossip key can declare any member dead or gone: SWIM accusations and
// leave messages carry no proof, and memberlist believes one whose
// incarnation is not older than what it knows (one with the largest
// incarnation even keeps a live node dead until it is reaped, 30 s later).
// So the agent acts on a death only once the node stops answering its own
// pings at its registered gossip address (confirmDeath): a node that is
// gone is believed dead at most one ping timeout (75 ms) later, one that
// leaves once it has shut its gossip down; a node still answering after
// confirmWindow is kept.
type gossipVerdicts struct {
	peers atomic.Pointer[map[string]string] // site peer name -> registered gossip address (joinSitePeers)

	mu         sync.Mutex      // guards the following
	g          *gossip.Gossip  // nil until initGossip has it
	saidDead   map[string]bool // gossip's last word on a node: dead (only dead ones are held)
	confirming map[string]bool // a confirmDeath runs for the node (only true is held)
	closed     bool            // close was called: no more confirmations start
	done       chan struct{}   // closed by close: confirmations stop
	wg         sync.WaitGroup  // confirmDeath goroutines
}

const (
	// confirmWindow is how long a node declared dead by gossip may go on
	// answering pings before the declaration is ignored; longer than a
	// leaving member's Leave (gossip.Close: 500 ms).
	confirmWindow = time.Second
	// confirmEvery spaces the pings of one confirmation.
	confirmEvery = 100 * time.Millisecond
)

// close stops the confirmations and waits for them.
func (v *gossipVerdicts) close() {
	v.mu.Lock()
	if !v.closed {
		v.closed = true
		if v.done != nil {
			close(v.done)
		}
	}
	v.mu.Unlock()
	v.wg.Wait()
}

// onGossipEvent is gossip's OnChange: alive is believed at once, a death
// once confirmDeath confirms it.
func (a *Agent) onGossipEvent(name string, alive bool) {
	if name == a.cfg.Node.Name {
		return
	}
	v := &a.gv
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.saidDead == nil {
		v.saidDead, v.confirming, v.done = map[string]bool{}, map[string]bool{}, make(chan struct{})
	}
	if alive {
		delete(v.saidDead, name)
		a.onGossip(name, true)
		return
	}
	// memberlist keeps a member that left the registry until it is reaped
	// and reports its death then: forgetNode has dropped it; keep nothing.
	if peers := v.peers.Load(); peers != nil {
		if _, ok := (*peers)[name]; !ok {
			return
		}
	}
	v.saidDead[name] = true
	if v.closed || v.confirming[name] {
		return
	}
	var addr string
	if peers := v.peers.Load(); peers != nil {
		addr = (*peers)[name]
	}
	v.confirming[name] = true
	v.wg.Add(1)
	go a.confirmDeath(v.g, name, addr, v.done)
}

// confirmDeath pings node at its registered gossip address until it does
// not answer, and then takes it for dead if gossip still says so. If it
// answers for confirmWindow, the death is ignored (and counted). A node
// that cannot be pinged (no gossip address known) is dead at once.
func (a *Agent) confirmDeath(g *gossip.Gossip, node, addr string, done <-chan struct{}) {
	v := &a.gv
	defer v.wg.Done()
	dead := g == nil || addr == ""
	for start := time.Now(); !dead && time.Since(start) < confirmWindow; {
		if dead = g.Ping(node, addr) != nil; dead {
			break
		}
		select {
		case <-done:
			return
		case <-time.After(confirmEvery):
		}
		v.mu.Lock()
		stillDead := v.saidDead[node]
		v.mu.Unlock()
		if !stillDead {
			break // gossip says alive again
		}
	}
	v.mu.Lock()
	delete(v.confirming, node)
	saidDead := v.saidDead[node]
	if dead && saidDead {
		a.gossipDead.Store(node, true)
	}
	v.mu.Unlock()
	switch {
	case dead && saidDead:
		a.nodeDied(node)
	case !dead: // it answered until gossip took the death back, or for confirmWindow
		a.m.gossipDisproved.Inc()
		a.log.Warn("agent: gossip said a site peer is dead but it answers; ignored", "node", node, "stillSaidDead", saidDead)
	}
}

// allowGossip is gossip's Allow: a member is heard only if it is a node of
// this site (as joinSitePeers last saw the control plane's or the cache's
// nodes) announced at the gossip address that node registered. Whoever can
// send gossip (any holder of the mesh-wide key) could otherwise add members
// without end, decide here the liveness of another site's nodes, or speak
// for a site peer that is down from another address. A node not known yet
// is heard once it is: joinSitePeers then joins it.
func (a *Agent) allowGossip(name string, addr netip.AddrPort) error {
	want, ok := "", false
	if peers := a.gv.peers.Load(); peers != nil {
		want, ok = (*peers)[name]
	}
	if !ok {
		a.m.gossipIgnored.Inc()
		return fmt.Errorf("%q is not a node of this site", name)
	}
	if reg, err := netip.ParseAddrPort(want); err == nil && (reg.Addr().Unmap() != addr.Addr() || reg.Port() != addr.Port()) {
		a.m.gossipIgnored.Inc()
		return fmt.Errorf("node %q announced at %s, registered at %s", name, addr, want)
	}
	return nil
}

// onGossip learns a site peer's liveness (gossip's verdict, checked by
// onGossipEvent). A dead peer's endpoints leave the candidate lists at
// once, and its mesh session is dropped so requests in flight on it fail
// now (idempotent ones are retried elsewhere) instead of hanging on a peer
// that will never answer.
func (a *Agent) onGossip(name string, alive bool) {
	if name == a.cfg.Node.Name {
		return
	}
	if alive {
		a.gossipDead.Delete(name)
		return
	}
	a.gossipDead.Store(name, true)
	a.nodeDied(name)
}

// forgetNode drops gossip's word on a node that left the registry: with
// node churn (vehicles, short-lived edge nodes) it would pile up, and a
// new node registered under the name would start out dead. Called once
// joinSitePeers has dropped the node from the site peers, so a death
// gossip reports later is not kept (onGossipEvent); a confirmDeath still
// running finds gossip's word gone and marks nothing.
func (a *Agent) forgetNode(name string) {
	v := &a.gv
	v.mu.Lock()
	delete(v.saidDead, name)
	a.gossipDead.Delete(name)
	v.mu.Unlock()
}

// nodeDied acts on the death of name, already in gossipDead.
func (a *Agent) nodeDied(name string) {
	a.m.gossipDeaths.Inc()
	cancelled := a.cancelNode(name)
	if a.peers != nil {
		a.peers.DropNode(name)
	}
	a.log.Warn("agent: site peer is gone (gossip)", "node", name, "inFlightCancelled", cancelled)
}

func (a *Agent) isGossipDead(node string) bool {
	if node == "" {
		return false
	}
	_, dead := a.gossipDead.Load(node)
	return dead
}

// joinSitePeers joins the gossip members of this node's site that it does
// not know yet (from the control plane's view or the cache, so it works
// offline too). Join runs in the background: it may wait on dead peers.
func (a *Agent) joinSitePeers() {
	if a.gossip == nil {
		return
	}
	members := map[string]bool{}
	for _, m := range a.gossip.Members() {
		members[m] = true
	}
	var addrs []string
	peers := map[string]string{}
	a.mu.Lock()
	for _, n := range a.res.nodes {
		if n.Meta.Name != a.cfg.Node.Name && n.Spec.GossipAddress != "" &&
			n.Spec.Site == a.self.Spec.Site && n.Spec.Region == a.self.Spec.Region {
			peers[n.Meta.Name] = n.Spec.GossipAddress
			if !members[n.Meta.Name] {
				addrs = append(addrs, n.Spec.GossipAddress)
			}
		}
	}
	a.mu.Unlock()
	a.gv.peers.Store(&peers) // before Join: the peers' answers are heard
	if len(addrs) == 0 {
		return
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		if _, err := a.gossip.Join(addrs); err != nil {
			a.log.Debug("agent: gossip join", "peers", addrs, "err", err)
		}
	}()
}

// errNodeDead is the cancel cause of attempts to a node gossip declared dead.
var errNodeDead = errors.New("node declared dead by gossip")

// watchNode returns ctx, cancelled with errNodeDead if gossip declares node
// dead before release is called.
func (a *Agent) watchNode(ctx context.Context, node string) (context.Context, func()) {
	if a.gossip == nil || node == "" {
		return ctx, func() {}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	token := new(int)
	a.watchMu.Lock()
	if a.nodeWatches[node] == nil {
		a.nodeWatches[node] = map[*int]context.CancelCauseFunc{}
	}
	a.nodeWatches[node][token] = cancel
	a.watchMu.Unlock()
	// A node declared dead between the pick and the registration above
	// was cancelled before this watch existed: an attempt to it would hang
	// on a frozen peer until its timeout. onGossip marks the node dead
	// before it cancels the watches, so one of the two sees the other.
	if a.isGossipDead(node) {
		cancel(errNodeDead)
	}
	return ctx, func() {
		a.watchMu.Lock()
		if delete(a.nodeWatches[node], token); len(a.nodeWatches[node]) == 0 {
			delete(a.nodeWatches, node) // else every node ever dialled stays
		}
		a.watchMu.Unlock()
		cancel(nil)
	}
}

// cancelNode fails every attempt in flight to node.
func (a *Agent) cancelNode(node string) int {
	a.watchMu.Lock()
	ws := a.nodeWatches[node]
	delete(a.nodeWatches, node)
	a.watchMu.Unlock()
	for _, cancel := range ws {
		cancel(errNodeDead)
	}
	return len(ws)
}
