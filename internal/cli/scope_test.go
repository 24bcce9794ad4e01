package cli

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/fogmesh/fogmesh/internal/agent"
)

// TestAgentScope: the config file's scope and the -scope flag (comma
// separated) reach the agent; a bad entry is a usage error naming it
// before anything starts.
func TestAgentScope(t *testing.T) {
	var cfg agent.Config
	if err := DecodeConfig([]byte("node: {name: a, site: s, region: r}\nscope: [\"shop/*\", cloud/orders]\n"), &cfg); err != nil ||
		!slices.Equal(cfg.Scope, []string{"shop/*", "cloud/orders"}) {
		t.Fatalf("config file scope: %v, %v", cfg.Scope, err)
	}
	err := RunAgent("fogmesh", []string{"-name", "a", "-site", "s", "-region", "r", "-scope", "shop/*, Cloud/Orders"})
	var ue *UsageError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), `scope[1]: "Cloud/Orders"`) {
		t.Fatalf("got %v, want a usage error naming scope[1]", err)
	}
}
