package relaycmd

import (
	"testing"

	"github.com/fogmesh/fogmesh/internal/cli/base"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// FuzzRelayConfig: the relay's config file (-config) is decoded strictly,
// and what it accepts is what it says: written back as JSON or YAML it
// reads the same (testenv.ConfigRoundTrip); a negative duration is refused.
func FuzzRelayConfig(f *testing.F) {
	for _, s := range []string{
		"addr: 0.0.0.0:7074\nadminAddr: 127.0.0.1:7075\ncertFile: /etc/relay/cert.pem\nkeyFile: /etc/relay/key.pem\nbundleFile: b.pem\ndenyFile: trust.json\n",
		"control: [\"10.0.0.1:7071\", \"10.0.0.2:7071\"]\nstateDir: /var/lib/fogmesh-relay\nname: r1\ncontrolHandshakeTimeout: 30s\n",
		"controlHandshakeTimeout: -10s\n",
		`{"addr":":7074","udpAddr":"off","reloadInterval":"5s","idleTimeout":"2m0s","maxSessionsPerNode":64,"maxSessionsPerPair":16,"bytesPerSecond":-1,"maxHandshakes":-1,"maxHandshakesPerSource":256}`,
		"reloadInterval: -1h30m\nidleTimeout: 1.5us\n",
		"idleTimeout: 2 minutes\n",
		"idleTimeout: -1ns\n",
		"bytesPerSecond: 9223372036854775807\n",
		"bytesPerSecond: 1e3\n",
		"maxSessionsPerNode: 1.5\n",
		"bogus: 1\n",
		"name: \"yes\"\ncontrol: [\"~\", \"null\", \"0x10\"]\n",
		"", "null", "[]", "{", "addr: [",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var fc relayFile
		if base.DecodeConfig(b, &fc) != nil {
			return
		}
		testenv.ConfigRoundTrip(t, &fc, base.DecodeConfig)
		if err := fc.checkDurations(); (err != nil) != (fc.ReloadInterval < 0 || fc.IdleTimeout < 0 || fc.ControlHandshakeTimeout < 0) {
			t.Fatalf("config %q: reloadInterval %v, idleTimeout %v, controlHandshakeTimeout %v: check %v", b, fc.ReloadInterval, fc.IdleTimeout, fc.ControlHandshakeTimeout, err)
		}
	})
}
