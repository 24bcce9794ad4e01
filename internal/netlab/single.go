package netlab

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"testing"

	"github.com/fogmesh/fogmesh/internal/testenv"
)

// NodeAddr is the address of eth0 in a namespace made by NewNetns. Its
// default route points at eth0, a veth whose peer (peer0) sits in the same
// namespace without an address or forwarding, so a packet to an address
// no rule rewrites (a ClusterIP without capture) is routed and then
// dropped at peer0: it never leaves the namespace.
const NodeAddr = "10.255.0.1"

// NodeAddr6 is eth0's IPv6 address in a namespace made by NewNetns, with
// the IPv6 default route there too.
const NodeAddr6 = "fd00:255::1"

// NewNetns makes one network namespace for the test — lo up, and eth0
// with NodeAddr/24 and the default route — and removes it, with the
// processes left in it and its nftables rules, when the test ends.
// (No dummy device: the kernel here may lack the module.) It is
// for tests of a single node's kernel rules (transparent capture), where
// the whole Lab would be waste. It skips the test without root or ip, and
// fails it in CI.
func NewNetns(t testing.TB, role string) *Netns {
	t.Helper()
	testenv.NeedRoot(t)
	testenv.NeedTool(t, "ip")
	if removed, err := Sweep(DefaultPrefix); err != nil || len(removed) > 0 {
		t.Logf("netlab: removed namespaces of a killed run: %v (%v)", removed, err)
	}
	var rnd [2]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		t.Fatal(err)
	}
	n := &Netns{Name: fmt.Sprintf("%s-%d-%d%s-%s", DefaultPrefix, os.Getpid(), labSeq.Add(1), hex.EncodeToString(rnd[:]), role)}
	if err := addNetns([]string{n.Name}); err != nil {
		t.Fatalf("netlab: %v", err)
	}
	t.Cleanup(func() {
		if err := deleteNetns(n.Name); err != nil {
			t.Errorf("netlab: cleanup: %v", err)
		}
	})
	if err := n.ip("link set lo up", "link add eth0 type veth peer name peer0", "addr add "+NodeAddr+"/24 dev eth0",
		"addr add "+NodeAddr6+"/64 dev eth0 nodad",
		"link set eth0 up", "link set peer0 up", "route add default dev eth0", "route add ::/0 dev eth0"); err != nil {
		t.Fatalf("netlab: %v", err)
	}
	return n
}

// Open opens the namespace's file, whose descriptor names the namespace
// to setns(2) and to netlink clients (nftables.WithNetNSFd). The caller
// closes it.
func (n *Netns) Open() (*os.File, error) {
	f, err := os.Open(netnsDir + "/" + n.Name)
	if err != nil {
		return nil, fmt.Errorf("netns %s: %w", n.Name, err)
	}
	return f, nil
}

// A pod namespace's link to its node (NewPod): the node's end (veth pod0)
// has PodGateway/24, the pod's (eth0) PodAddr/24 and the default route
// through PodGateway, as a CNI bridge or veth plugin sets a pod up.
const (
	PodGateway = "10.255.1.1"
	PodAddr    = "10.255.1.2"
)

// NewPod makes a second namespace for the test, linked to node (made by
// NewNetns) as a pod is to its node: its packets to any address reach
// node's prerouting hook. Removed when the test ends.
func NewPod(t testing.TB, node *Netns, role string) *Netns {
	t.Helper()
	var rnd [2]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		t.Fatal(err)
	}
	p := &Netns{Name: fmt.Sprintf("%s-%d-%d%s-%s", DefaultPrefix, os.Getpid(), labSeq.Add(1), hex.EncodeToString(rnd[:]), role)}
	if err := addNetns([]string{p.Name}); err != nil {
		t.Fatalf("netlab: %v", err)
	}
	t.Cleanup(func() {
		if err := deleteNetns(p.Name); err != nil {
			t.Errorf("netlab: cleanup: %v", err)
		}
	})
	if err := p.ip("link set lo up", "link add eth0 type veth peer name pod0 netns "+node.Name,
		"addr add "+PodAddr+"/24 dev eth0", "link set eth0 up", "route add default via "+PodGateway+" dev eth0"); err != nil {
		t.Fatalf("netlab: %v", err)
	}
	if err := node.ip("addr add "+PodGateway+"/24 dev pod0", "link set pod0 up"); err != nil {
		t.Fatalf("netlab: %v", err)
	}
	// The veth carrier comes up asynchronously: wait, or the first SYN is
	// lost and the first dial takes a 1 s retransmission.
	for _, ns := range []*Netns{p, node} {
		if err := (&Lab{names: []string{ns.Name}}).waitRunning(); err != nil {
			t.Fatalf("netlab: %v", err)
		}
	}
	return p
}
