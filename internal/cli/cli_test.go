package cli

import (
	"strings"
	"testing"

	"github.com/fogmesh/fogmesh/internal/agent"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

func TestDecodeConfigNamesTheField(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"node: {name: a, site: s, region: r}\nmeshAddr: [1]\n", "meshAddr"},
		{"node: {name: a, site: s, region: r}\nbogus: 1\n", "bogus"},
		{"node: {name: a, site: s, region: r}\nhealthInterval: soon\n", "soon"},
		// Issue 16: the field by its full path.
		{"node: {name: a, site: s, region: r}\nhealthInterval: soon\n", "healthInterval: "},
		{"workloads: [{service: a, ports: [{port: 80, bogus: 1}]}]\n", "workloads[0].ports[0].bogus: unknown field"},
		{"workloads: [{service: a, ports: [{port: 80}], check: {type: tcp, timeout: 3 s}}]\n", "workloads[0].check.timeout: time: "},
		{"node: [\n", "yaml"},
	} {
		var cfg agent.Config
		err := DecodeConfig([]byte(c.in), &cfg)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: got %v, want an error naming %q", c.in, err, c.want)
		}
	}
	var cfg agent.Config
	if err := DecodeConfig([]byte(""), &cfg); err != nil {
		t.Errorf("empty file: %v", err)
	}
}

// FuzzAgentConfig: no config file crashes decoding or validation, and an
// accepted config is what it says: written back as JSON or YAML it reads
// the same, and validation gives the same verdict on what was read back.
func FuzzAgentConfig(f *testing.F) {
	f.Add([]byte("node: {name: edge-1, site: shop-1, region: east}\ncontrol: [\"127.0.0.1:7071\"]\nworkloads: [{service: a, ports: [{port: 80}]}]\n"))
	f.Add([]byte(`{"node":{"name":"n1","site":"s","region":"r"},"vipRange":"127.1.0.0/16","vip6Range":"fd00::/64","healthInterval":"1s"}`))
	f.Add([]byte("node: {name: n1, site: s, region: r}\nmeshAddr: 0.0.0.0:1\n"))
	f.Add([]byte("workloads: [{service: a, ports: [{port: 80}], check: {type: http, port: nope}}]\n"))
	f.Add([]byte("{{{"))
	f.Add([]byte("workloads: [{service: a, ports: [{port: 80, bogus: 1}], check: {type: tcp, timeout: 3 s}}]\nhealthInterval: soon\n"))
	f.Add([]byte("node: {name: n1, site: s, region: r, labels: {}, coordinates: {lat: 1.5, lon: -3}}\npathNormalization: {normalization: MERGE_SLASHES}\nmeshDirectStreams: false\n"))
	f.Add([]byte("node: {name: n1, site: s, region: r}\nscope: [default/*, a/b]\nrelays: [\"r:1\"]\nmeshPingInterval: 1h2m3.5s\nejectFor: 0s\naudit: {}\nudp: {}\n"))
	f.Add([]byte("node: {name: \"yes\", site: \"0x1\", region: \"~\"}\nstateDir: \"null\"\njoinToken: \"- a\"\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var cfg agent.Config
		if DecodeConfig(b, &cfg) != nil {
			return
		}
		back := testenv.ConfigRoundTrip(t, &cfg, DecodeConfig)
		// CheckConfig may fill defaults in what cfg shares: check after
		// the round trip.
		err, errBack := agent.CheckConfig(cfg), agent.CheckConfig(*back)
		if (err == nil) != (errBack == nil) {
			t.Fatalf("config %q: validation %v, of the same read back %v", b, err, errBack)
		}
	})
}
