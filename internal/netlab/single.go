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
		"link set eth0 up", "link set peer0 up", "route add default dev eth0"); err != nil {
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
