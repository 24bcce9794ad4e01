package cli

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/fogmesh/fogmesh/internal/agent"
	"github.com/fogmesh/fogmesh/internal/pathnorm"
)

// TestAgentConfigPathNormalization: the agent config file takes Istio's
// option names, also in MeshConfig's {normalization: NAME} form, defaults
// to BASE and names the field of a bad value.
func TestAgentConfigPathNormalization(t *testing.T) {
	const node = "node: {name: a, site: s, region: r}\n"
	for in, want := range map[string]pathnorm.Mode{
		node:                               pathnorm.Base,
		node + "pathNormalization: NONE\n": pathnorm.None,
		node + "pathNormalization: MERGE_SLASHES\n":                             pathnorm.MergeSlashes,
		node + "pathNormalization: {normalization: DECODE_AND_MERGE_SLASHES}\n": pathnorm.DecodeAndMergeSlashes,
	} {
		var cfg agent.Config
		if err := DecodeConfig([]byte(in), &cfg); err != nil || cfg.PathNormalization != want {
			t.Errorf("%q: %v, %v; want %v", in, cfg.PathNormalization, err, want)
		}
	}
	var cfg agent.Config
	if err := DecodeConfig([]byte(node+"pathNormalization: MERGE\n"), &cfg); err == nil || !strings.Contains(err.Error(), "pathNormalization") {
		t.Errorf("bad value: %v", err)
	}
	b, err := os.ReadFile("../../examples/agent.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg = agent.Config{}
	if err := DecodeConfig(b, &cfg); err != nil || agent.CheckConfig(cfg) != nil {
		t.Errorf("examples/agent.yaml: %v %v", err, agent.CheckConfig(cfg))
	}
}

// TestAgentPathNormalizationFlag: a bad -path-normalization is a usage
// error naming the flag (before anything starts).
func TestAgentPathNormalizationFlag(t *testing.T) {
	err := RunAgent("fogmesh", []string{"-name", "a", "-site", "s", "-region", "r", "-path-normalization", "MERGE"})
	var ue *UsageError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "-path-normalization") {
		t.Fatalf("got %v, want a usage error naming -path-normalization", err)
	}
}
