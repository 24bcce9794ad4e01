package main

import (
	"log/slog"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/cli"
	"github.com/fogmesh/fogmesh/internal/control"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// FuzzControlConfig: the control plane's config file (-config) is decoded
// strictly; what it accepts is what it says (written back as JSON or YAML
// it reads the same, testenv.ConfigRoundTrip), and the control.Config it
// makes is validated or refused with an error, never a panic, the same
// way for what was read back; a negative duration (etcdSessionTTL too,
// whatever the store) is refused.
func FuzzControlConfig(f *testing.F) {
	for _, s := range []string{
		"stateDir: /var/lib/fogmesh/control\nadminAddr: 0.0.0.0:7070\nsyncAddr: 0.0.0.0:7071\nheartbeatInterval: 5s\nnodeTimeout: 15s\nserverNames: [cp.example, 10.0.0.1]\n",
		"mode: regional\nregion: eu\nupstreams: [\"global.example:7071\"]\nvipIndexes: 1-1000\nregionCATTL: 720h\n",
		"mode: regional\nregion: eu\nupstreams: [\"g:7071\"]\ninsecure: true\nvipRange: 10.64.0.0/10\nvipIndexes: 5-4194302\n",
		`{"insecure":true,"vipRange":"fd00::/64"}`,
		`{"insecure":true,"vipRange":"fd00::/120","vipIndexes":"1-10"}`,
		"vipRange: 127.77.0.0/31\n",
		"nodeTTL: 24h\nautonomyWindow: 72h\n",
		"workloadTTL: 1s\n",
		"workloadTTL: -1h\nnodeTTL: -5m\n",
		"nodeExpiry: 1.5e3h\n",
		"store: etcd\netcdEndpoints: [\"https://e1:2379\"]\netcdSessionTTL: 10s\netcdMaxTxnOps: 128\n",
		"etcdSessionTTL: -10s\n",
		"kube: in-cluster\nkubeSiteLabels: [fogmesh.io/site]\nkubeMaxServicePorts: -1\n",
		"maxEndpointsPerNode: -1\nauditArchivesPerNode: -1\nsyncMaxHandshakes: -1\nadminMaxHandshakesPerSource: 0\n",
		"trustDomain: \"yes\"\nname: \"null\"\nregion: \"~\"\n",
		"heartbeatInterval: -5s\nnodeTimeout: 15s\n",
		"reconnectGrace: -1ns\n",
		"insecure: true\nregionCATTL: -720h\n",
		"heartbeatInterval: soon\n", "bogus: 1\n", "", "null", "{", "[]",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var fc controlFile
		if cli.DecodeConfig(b, &fc) != nil {
			return
		}
		back := testenv.ConfigRoundTrip(t, &fc, cli.DecodeConfig)
		vipMin, vipMax, err := parseVIPIndexes(fc.VIPIndexes)
		if err != nil {
			return
		}
		// runControl's default; a directory that holds no audit chain.
		fc.StateDir, back.StateDir = "/nonexistent/fogmesh-fuzz", "/nonexistent/fogmesh-fuzz"
		err, errBack := control.CheckConfig(fc.controlConfig(vipMin, vipMax)), control.CheckConfig(back.controlConfig(vipMin, vipMax))
		if (err == nil) != (errBack == nil) {
			t.Fatalf("config %q: validation %v, of the same read back %v", b, err, errBack)
		}
		for _, d := range []durationValue{fc.HeartbeatInterval, fc.NodeTimeout, fc.NodeExpiry, fc.ReconnectGrace,
			fc.NodeTTL, fc.WorkloadTTL, fc.AutonomyWindow, fc.RotationOverlap, fc.RegionCATTL} {
			if d < 0 && err == nil {
				t.Fatalf("config %q: negative duration %s accepted", b, time.Duration(d))
			}
		}
		// Whatever the store (no file of the input read: no /dev/zero).
		noFiles := fc
		noFiles.EtcdCAFile, noFiles.EtcdCertFile, noFiles.EtcdKeyFile, noFiles.EtcdPasswordFile = "", "", "", ""
		if _, err := etcdOptions(&noFiles, slog.New(slog.DiscardHandler)); fc.EtcdSessionTTL < 0 && err == nil {
			t.Fatalf("config %q: negative etcdSessionTTL accepted", b)
		}
	})
}
