package relaycmd

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fogmesh/fogmesh/internal/cli/base"
)

// TestNegativeDurationRefused: a negative reloadInterval, idleTimeout or
// controlHandshakeTimeout, in the config file or as a flag, is a usage
// error naming the field, before anything is read or bound; a negative
// reloadInterval fell back to 5s without a word. controlHandshakeTimeout,
// a bound of the join and the control plane stream, needs -control.
func TestNegativeDurationRefused(t *testing.T) {
	dir := t.TempDir()
	n := 0
	cfg := func(body string) string {
		n++
		p := filepath.Join(dir, fmt.Sprintf("relay%d.yaml", n))
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"-config", cfg("reloadInterval: -1h\n")}, "reloadInterval -1h0m0s is negative"},
		{[]string{"-config", cfg("idleTimeout: -2m\n")}, "idleTimeout -2m0s is negative"},
		{[]string{"-reload-interval=-1s"}, "reloadInterval -1s is negative"},
		{[]string{"-idle-timeout=-1ns"}, "idleTimeout -1ns is negative"},
		{[]string{"-config", cfg("controlHandshakeTimeout: -1s\ncontrol: [\"127.0.0.1:1\"]\nstateDir: " + dir + "\n")}, "controlHandshakeTimeout -1s is negative"},
		{[]string{"-control", "127.0.0.1:1", "-state-dir", dir, "-control-handshake-timeout=-1ms"}, "controlHandshakeTimeout -1ms is negative"},
		{[]string{"-control-handshake-timeout=30s"}, "need -control"},
		{[]string{"-control-handshake-timeout=0"}, "need -control"}, // set, even to the default
	} {
		err := Run("fogmesh relay", append(c.args, "-addr", "127.0.0.1:0", "-admin-addr", "127.0.0.1:0"))
		var ue *base.UsageError
		if err == nil || !strings.Contains(err.Error(), c.want) || !errors.As(err, &ue) {
			t.Errorf("%v: %v, want a usage error containing %q", c.args, err, c.want)
		}
	}
}
