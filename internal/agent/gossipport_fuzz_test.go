package agent

import (
	"bytes"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestGossipPortFileDamagedWarns: a gossip-port file that holds no port
// (damaged, or edited by hand) is not taken, and the agent says so: its
// peers will hear it only once the control plane registered the new port.
// Before, it was dropped without a word.
func TestGossipPortFileDamagedWarns(t *testing.T) {
	for _, b := range []string{"", "0\n", "65536\n", "x\n", "80 81\n", "-1", strings.Repeat("7", 100)} {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, gossipPortFile), []byte(b), 0o600); err != nil {
			t.Fatal(err)
		}
		var logs bytes.Buffer
		a := &Agent{cfg: Config{GossipAddr: "127.74.0.1:0", StateDir: dir}, log: slog.New(slog.NewTextHandler(&logs, nil))}
		if kept := a.keptGossipAddr(); kept != "" {
			t.Errorf("gossip-port %q: kept %q", b, kept)
		}
		if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), gossipPortFile) {
			t.Errorf("gossip-port %q: no warning naming the file: %q", b, logs.String())
		}
	}
	// No file (a first run) is no warning.
	var logs bytes.Buffer
	a := &Agent{cfg: Config{GossipAddr: "127.74.0.1:0", StateDir: t.TempDir()}, log: slog.New(slog.NewTextHandler(&logs, nil))}
	if kept := a.keptGossipAddr(); kept != "" || logs.Len() != 0 {
		t.Errorf("no gossip-port file: kept %q, logged %q", kept, logs.String())
	}
}

// FuzzGossipPortFile: the gossip-port file (the port of the last run, for
// an agent whose gossipAddr asks for any port) gives the configured host
// with a port from 1 to 65535 written in decimal, or nothing (a warning);
// a port kept writes back (keepGossipAddr) and reads again the same.
func FuzzGossipPortFile(f *testing.F) {
	for _, s := range []string{"7946\n", "7946", " 7946 \n", "0\n", "65535\n", "65536\n", "007946\n", "+7946\n", "0x1f\n",
		"7_946\n", "-1\n", "", "\n", "7946\n7947\n", "7946\x00\n", "\u00857946\u0085"} {
		f.Add([]byte(s))
	}
	dir := f.TempDir()
	log := slog.New(slog.DiscardHandler)
	f.Fuzz(func(t *testing.T, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, gossipPortFile), b, 0o600); err != nil {
			t.Fatal(err)
		}
		a := &Agent{cfg: Config{GossipAddr: "127.74.0.1:0", StateDir: dir}, log: log}
		kept := a.keptGossipAddr()
		if kept == "" {
			return
		}
		host, port, err := net.SplitHostPort(kept)
		p, perr := strconv.Atoi(port)
		if err != nil || host != "127.74.0.1" || perr != nil || p < 1 || p > 65535 || strconv.Itoa(p) != port {
			t.Fatalf("gossip-port %q: kept %q", b, kept)
		}
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err != nil || n != p {
			t.Fatalf("gossip-port %q: kept %q", b, kept)
		}
		a.keepGossipAddr(kept)
		if again := a.keptGossipAddr(); again != kept {
			t.Fatalf("gossip-port %q: kept %q, written back reads %q", b, kept, again)
		}
	})
}
