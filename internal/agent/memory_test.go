package agent

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/fogmesh/fogmesh/internal/transport"
)

// TestMeshStreamWindowConfig: meshStreamWindow decodes from the config
// file; a window outside 256 KiB..16 MiB is refused with the field named.
func TestMeshStreamWindowConfig(t *testing.T) {
	base := func(w int) Config {
		return Config{Node: NodeConfig{Name: "n", Site: "s", Region: "r"}, StateDir: t.TempDir(), Insecure: true,
			VIPRange: "127.176.0.0/16", MeshStreamWindow: w}
	}
	var c Config
	if err := json.Unmarshal([]byte(`{"meshStreamWindow": 4194304}`), &c); err != nil || c.MeshStreamWindow != 4<<20 {
		t.Fatalf("decoded %d, %v", c.MeshStreamWindow, err)
	}
	for _, w := range []int{0, transport.MinStreamWindow, transport.MaxStreamWindow} {
		if err := CheckConfig(base(w)); err != nil {
			t.Errorf("meshStreamWindow %d: %v", w, err)
		}
	}
	for _, w := range []int{-1, 1000, transport.MinStreamWindow - 1, transport.MaxStreamWindow + 1} {
		if err := CheckConfig(base(w)); err == nil || !strings.Contains(err.Error(), "meshStreamWindow") {
			t.Errorf("meshStreamWindow %d: err = %v, want one naming meshStreamWindow", w, err)
		}
	}
}

// TestMeshPeerBufferConfig: meshPeerBuffer decodes from the config file;
// 0 (the default) and a number of bytes are taken, a negative value is
// refused with the field named.
func TestMeshPeerBufferConfig(t *testing.T) {
	base := func(b int) Config {
		return Config{Node: NodeConfig{Name: "n", Site: "s", Region: "r"}, StateDir: t.TempDir(), Insecure: true,
			VIPRange: "127.176.0.0/16", MeshPeerBuffer: b}
	}
	var c Config
	if err := json.Unmarshal([]byte(`{"meshPeerBuffer": 67108864}`), &c); err != nil || c.MeshPeerBuffer != 64<<20 {
		t.Fatalf("decoded %d, %v", c.MeshPeerBuffer, err)
	}
	for _, b := range []int{0, 1, 64 << 20} {
		if err := CheckConfig(base(b)); err != nil {
			t.Errorf("meshPeerBuffer %d: %v", b, err)
		}
	}
	for _, b := range []int{-1, -64 << 20} {
		if err := CheckConfig(base(b)); err == nil || !strings.Contains(err.Error(), "meshPeerBuffer") || !strings.Contains(err.Error(), "negative") {
			t.Errorf("meshPeerBuffer %d: err = %v, want one naming meshPeerBuffer as negative", b, err)
		}
	}
}
