package deploy_test

import (
	"archive/tar"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// maxAgentImage bounds the agent image (issue 15): its one layer,
// uncompressed, so the compressed size is bounded too.
const maxAgentImage = 20 << 20

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations"`
	Platform    *struct {
		OS           string `json:"os"`
		Architecture string `json:"architecture"`
	} `json:"platform"`
}

type manifest struct {
	MediaType string       `json:"mediaType"`
	Config    descriptor   `json:"config"`
	Layers    []descriptor `json:"layers"`
	Manifests []descriptor `json:"manifests"`
}

// TestAgentImage builds the agent's OCI image for this machine's
// architecture, or the architectures $FOGMESH_IMAGE_ARCHES names (comma
// separated, e.g. amd64,arm64: a cold cross-build takes minutes on a busy
// machine), with tools/image (what `make image` runs for both) and
// reads the layout back with the standard library alone: an index of a
// multi-platform index, the platform, every blob's digest, the entrypoint,
// the non-root user, the binary in the layer, and the size bound.
func TestAgentImage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the agent")
	}
	arches := []string{runtime.GOARCH}
	if s := os.Getenv("FOGMESH_IMAGE_ARCHES"); s != "" {
		arches = strings.Split(s, ",")
	}
	var plats []string
	for _, a := range arches {
		plats = append(plats, "linux/"+a)
	}
	out := t.TempDir()
	start := time.Now()
	cmd := exec.Command("go", "run", ".", "-images", "fogmesh-agent", "-platforms", strings.Join(plats, ","), "-tag", "t1", "-out", out, "-tar")
	cmd.Dir = filepath.Join("..", "tools", "image")
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("tools/image: %v\n%s", err, b)
	}
	t.Logf("built in %v: %s", time.Since(start).Round(time.Second), b)
	dir := filepath.Join(out, "fogmesh-agent")
	if _, err := os.Stat(dir + ".tar"); err != nil {
		t.Errorf("no oci-archive: %v", err)
	}
	blob := func(d descriptor) []byte {
		t.Helper()
		hexd, ok := strings.CutPrefix(d.Digest, "sha256:")
		if !ok {
			t.Fatalf("digest %q", d.Digest)
		}
		b, err := os.ReadFile(filepath.Join(dir, "blobs", "sha256", hexd))
		if err != nil {
			t.Fatal(err)
		}
		if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != hexd || int64(len(b)) != d.Size {
			t.Fatalf("blob %s: digest or size (%d, want %d) does not match", d.Digest, len(b), d.Size)
		}
		return b
	}
	decode := func(b []byte, v any) {
		t.Helper()
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("%v: %s", err, b)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "oci-layout")); !strings.Contains(string(b), `"imageLayoutVersion"`) {
		t.Fatalf("oci-layout: %q", b)
	}
	var top manifest
	b, err = os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	decode(b, &top)
	if len(top.Manifests) != 1 || top.Manifests[0].MediaType != "application/vnd.oci.image.index.v1+json" ||
		top.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != "t1" {
		t.Fatalf("index.json: %s", b)
	}
	var idx manifest
	decode(blob(top.Manifests[0]), &idx)
	if len(idx.Manifests) != len(arches) {
		t.Fatalf("image index has %d manifests, want %d: %+v", len(idx.Manifests), len(arches), idx)
	}
	for i, d := range idx.Manifests {
		if d.Platform == nil || d.Platform.OS != "linux" || d.Platform.Architecture != arches[i] {
			t.Fatalf("image index entry %d: platform %+v, want linux/%s", i, d.Platform, arches[i])
		}
		checkAgentImage(t, arches[i], blob(d), blob, decode)
	}
}

// checkAgentImage checks one platform's manifest of the agent image.
func checkAgentImage(t *testing.T, arch string, mb []byte, blob func(descriptor) []byte, decode func([]byte, any)) {
	t.Helper()
	var m manifest
	decode(mb, &m)
	if m.MediaType != "application/vnd.oci.image.manifest.v1+json" || len(m.Layers) != 1 {
		t.Fatalf("manifest: %+v", m)
	}
	var cfg struct {
		OS           string `json:"os"`
		Architecture string `json:"architecture"`
		Config       struct {
			Entrypoint []string
			User       string
		} `json:"config"`
	}
	decode(blob(m.Config), &cfg)
	if cfg.OS != "linux" || cfg.Architecture != arch || strings.Join(cfg.Config.Entrypoint, " ") != "/usr/bin/fogmesh-agent" ||
		cfg.Config.User != "65532:65532" {
		t.Fatalf("config: %+v", cfg)
	}
	layer := blob(m.Layers[0])
	zr, err := gzip.NewReader(strings.NewReader(string(layer)))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	var uncompressed int64
	files := map[string]*tar.Header{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, tr)
		uncompressed += n
		files[h.Name] = h
	}
	bin := files["usr/bin/fogmesh-agent"]
	if bin == nil || bin.Mode&0o111 == 0 || bin.Size < 1<<20 {
		t.Fatalf("no executable /usr/bin/fogmesh-agent in the layer: %+v", bin)
	}
	if files["etc/passwd"] == nil || files["var/lib/fogmesh/agent/"] == nil || files["var/lib/fogmesh/agent/"].Uid != 65532 {
		t.Fatalf("layer lacks /etc/passwd or a state dir owned by 65532: %v", files)
	}
	t.Logf("agent image linux/%s: layer %d bytes compressed, %d bytes of files uncompressed", arch, m.Layers[0].Size, uncompressed)
	if uncompressed > maxAgentImage || m.Layers[0].Size > maxAgentImage {
		t.Fatalf("agent image %d bytes uncompressed, %d compressed: over %d", uncompressed, m.Layers[0].Size, maxAgentImage)
	}
}
