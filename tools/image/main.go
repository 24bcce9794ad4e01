// Command image builds fogmesh's OCI images, the node agent
// (cmd/fogmesh-agent) and the control plane (cmd/fogmesh), for several
// platforms without a Docker daemon: it cross-compiles static binaries
// (CGO_ENABLED=0) and writes them with go-containerregistry as OCI image
// layouts holding a multi-platform index, one directory per image, and
// optionally a tar of each layout (an oci-archive, which `skopeo copy
// oci-archive:` and `crane push` read).
//
// It is its own module so that go-containerregistry never enters the main
// module's, let alone the agent's, dependency graph. `make image` runs it.
//
// An image holds the binary, /etc/passwd and /etc/group naming the
// non-root user 65532 it runs as by default, CA certificates (when the
// build host has them) and writable /tmp and state directories: no shell,
// no package manager. The agent needs root with CAP_NET_ADMIN only for
// transparent capture (nftables); deploy/ grants exactly that.
package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// UID is the non-root user the images run as unless a pod says otherwise
// (distroless's "nonroot").
const UID = 65532

// spec is one image.
type spec struct {
	name       string   // layout directory and default repository name
	pkg        string   // Go package to build, relative to the source root
	binary     string   // path of the binary in the image, without the leading /
	entrypoint []string //
	cmd        []string // default arguments
	stateDir   string   // created owned by UID
}

var specs = []spec{
	{name: "fogmesh-agent", pkg: "./cmd/fogmesh-agent", binary: "usr/bin/fogmesh-agent",
		entrypoint: []string{"/usr/bin/fogmesh-agent"}, stateDir: "var/lib/fogmesh/agent"},
	{name: "fogmesh", pkg: "./cmd/fogmesh", binary: "usr/bin/fogmesh",
		entrypoint: []string{"/usr/bin/fogmesh"}, cmd: []string{"control"}, stateDir: "var/lib/fogmesh/control"},
}

// epoch stamps every file and the image configs, so that a build of the
// same source gives the same digests.
var epoch = time.Unix(0, 0).UTC()

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

type args struct {
	src       string
	out       string
	tag       string
	platforms []v1.Platform
	images    []spec
	tar       bool
	caCerts   string
}

func run(argv []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("image", flag.ContinueOnError)
	src := fs.String("src", "../..", "fogmesh source root")
	out := fs.String("out", "../../bin/image", "output directory: one OCI layout per image in OUT/NAME")
	tag := fs.String("tag", "dev", "tag written as the layout's org.opencontainers.image.ref.name")
	plats := fs.String("platforms", "linux/amd64,linux/arm64", "platforms, comma separated (os/arch[/variant])")
	only := fs.String("images", "fogmesh-agent,fogmesh", "images to build, comma separated")
	tarOut := fs.Bool("tar", false, "also write OUT/NAME.tar, a tar of the layout (oci-archive)")
	ca := fs.String("ca-certs", "/etc/ssl/certs/ca-certificates.crt", "CA bundle to put at /etc/ssl/certs/ca-certificates.crt (empty or missing: none)")
	if err := fs.Parse(argv); err != nil {
		return err
	}
	a := args{src: *src, out: *out, tag: *tag, tar: *tarOut, caCerts: *ca}
	for _, p := range strings.Split(*plats, ",") {
		pl, err := v1.ParsePlatform(strings.TrimSpace(p))
		if err != nil || pl.OS == "" || pl.Architecture == "" {
			return fmt.Errorf("-platforms: %q is not os/arch", p)
		}
		a.platforms = append(a.platforms, *pl)
	}
	for _, n := range strings.Split(*only, ",") {
		found := false
		for _, s := range specs {
			if s.name == strings.TrimSpace(n) {
				a.images, found = append(a.images, s), true
			}
		}
		if !found {
			return fmt.Errorf("-images: unknown image %q (have fogmesh-agent, fogmesh)", n)
		}
	}
	var report []result
	for _, s := range a.images {
		r, err := build(a, s)
		if err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		report = append(report, r...)
	}
	for _, r := range report {
		fmt.Fprintf(stdout, "%s %s/%s: layer %.1f MB compressed, %.1f MB uncompressed\n",
			r.Image, r.OS, r.Arch, float64(r.Compressed)/1e6, float64(r.Uncompressed)/1e6)
	}
	return nil
}

// result is one platform image's sizes.
type result struct {
	Image, OS, Arch          string
	Compressed, Uncompressed int64
}

func build(a args, s spec) ([]result, error) {
	tmp, err := os.MkdirTemp("", "fogmesh-image")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	var res []result
	for _, pl := range a.platforms {
		bin := filepath.Join(tmp, s.name+"-"+pl.OS+"-"+pl.Architecture)
		if err := goBuild(a.src, s.pkg, bin, pl); err != nil {
			return nil, err
		}
		layerTar, err := rootfs(s, bin, a.caCerts)
		if err != nil {
			return nil, err
		}
		img, err := image(s, pl, layerTar)
		if err != nil {
			return nil, err
		}
		ls, err := img.Layers()
		if err != nil {
			return nil, err
		}
		csize, err := ls[0].Size()
		if err != nil {
			return nil, err
		}
		res = append(res, result{Image: s.name, OS: pl.OS, Arch: pl.Architecture, Compressed: csize, Uncompressed: int64(len(layerTar))})
		p := pl
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &p}})
	}
	dir := filepath.Join(a.out, s.name)
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	lp, err := layout.Write(dir, empty.Index)
	if err != nil {
		return nil, fmt.Errorf("write layout: %w", err)
	}
	if err := lp.AppendIndex(idx, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": a.tag})); err != nil {
		return nil, fmt.Errorf("write layout: %w", err)
	}
	if a.tar {
		if err := tarDir(dir, dir+".tar"); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// goBuild cross-compiles a static binary.
func goBuild(src, pkg, out string, pl v1.Platform) error {
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, pkg)
	cmd.Dir = src
	env := append(os.Environ(), "CGO_ENABLED=0", "GOOS="+pl.OS, "GOARCH="+pl.Architecture)
	if pl.Variant != "" && pl.Architecture == "arm" {
		env = append(env, "GOARM="+strings.TrimPrefix(pl.Variant, "v"))
	}
	cmd.Env = env
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s for %s/%s: %w\n%s", pkg, pl.OS, pl.Architecture, err, b)
	}
	return nil
}

// rootfs is the image's single layer: the binary and the few files a
// static Go program expects.
func rootfs(s spec, bin, caCerts string) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dir := func(name string, mode int64, uid int) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, Uid: uid, Gid: uid, ModTime: epoch, Format: tar.FormatPAX})
	}
	file := func(name string, mode int64, b []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(b)), ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return err
		}
		_, err := tw.Write(b)
		return err
	}
	binBytes, err := os.ReadFile(bin)
	if err != nil {
		return nil, err
	}
	var ca []byte
	if caCerts != "" {
		if ca, err = os.ReadFile(caCerts); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("-ca-certs: %w", err)
		}
	}
	steps := []func() error{
		func() error { return dir("etc", 0o755, 0) },
		func() error {
			return file("etc/passwd", 0o644, fmt.Appendf(nil, "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", UID, UID))
		},
		func() error { return file("etc/group", 0o644, fmt.Appendf(nil, "root:x:0:\nnonroot:x:%d:\n", UID)) },
		func() error { return dir("etc/ssl", 0o755, 0) },
		func() error { return dir("etc/ssl/certs", 0o755, 0) },
		func() error {
			if len(ca) == 0 {
				return nil
			}
			return file("etc/ssl/certs/ca-certificates.crt", 0o644, ca)
		},
		func() error { return dir("home", 0o755, 0) },
		func() error { return dir("home/nonroot", 0o700, UID) },
		func() error { return dir("tmp", 0o1777, 0) },
		func() error { return dir("usr", 0o755, 0) },
		func() error { return dir("usr/bin", 0o755, 0) },
		func() error { return file(s.binary, 0o755, binBytes) },
		func() error { return dir("var", 0o755, 0) },
		func() error { return dir("var/lib", 0o755, 0) },
		func() error { return dir("var/lib/fogmesh", 0o755, 0) },
		func() error { return dir(s.stateDir, 0o700, UID) },
	}
	for _, f := range steps {
		if err := f(); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// image is one platform's image of s with layerTar as its filesystem.
func image(s spec, pl v1.Platform, layerTar []byte) (v1.Image, error) {
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = pl.OS, pl.Architecture, pl.Variant
	cf.Created = v1.Time{Time: epoch}
	cf.Config = v1.Config{
		Entrypoint: s.entrypoint,
		Cmd:        s.cmd,
		User:       fmt.Sprintf("%d:%d", UID, UID),
		WorkingDir: "/",
		Env:        []string{"PATH=/usr/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"},
		Labels: map[string]string{
			"org.opencontainers.image.title":  s.name,
			"org.opencontainers.image.source": "https://github.com/fogmesh/fogmesh",
		},
	}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return nil, err
	}
	img, err = mutate.Append(img, mutate.Addendum{Layer: layer, MediaType: types.OCILayer,
		History: v1.History{Created: v1.Time{Time: epoch}, CreatedBy: "fogmesh tools/image: " + s.pkg + " for " + pl.String()}})
	if err != nil {
		return nil, fmt.Errorf("append layer: %w", err)
	}
	return img, nil
}

// tarDir writes the layout dir as a tar with paths relative to it.
func tarDir(dir, out string) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		h, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		h.Name, h.ModTime = filepath.ToSlash(rel), epoch
		if d.IsDir() {
			h.Name += "/"
		}
		h.Uid, h.Gid, h.Uname, h.Gname = 0, 0, "", ""
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		b, err := os.Open(p)
		if err != nil {
			return err
		}
		defer b.Close()
		_, err = io.Copy(tw, b)
		return err
	})
	if err == nil {
		err = tw.Close()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("tar %s: %w", out, err)
	}
	return nil
}
