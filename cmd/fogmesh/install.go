package main

import (
	"flag"
	"io"
	"os"
	"strings"

	"github.com/fogmesh/fogmesh/deploy"
	"github.com/fogmesh/fogmesh/internal/cli"
)

// runInstall runs `fogmesh install`: it prints deploy/'s manifests (the
// namespace, RBAC, the control plane and one agent DaemonSet per site)
// for `kubectl apply -f -`. It talks to no cluster.
func runInstall(args []string) error { return install(args, os.Stdout) }

func install(args []string, w io.Writer) error {
	fs := flag.NewFlagSet("fogmesh install", flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	var o deploy.Options
	fs.StringVar(&o.Namespace, "namespace", "fogmesh", "namespace of the control plane and agents")
	registry := fs.String("registry", "ghcr.io/fogmesh", "image repository prefix (images REGISTRY/fogmesh and REGISTRY/fogmesh-agent)")
	tag := fs.String("tag", "latest", "image tag")
	fs.StringVar(&o.AgentImage, "agent-image", "", "agent image (default REGISTRY/fogmesh-agent:TAG)")
	fs.StringVar(&o.ControlImage, "control-image", "", "control plane image (default REGISTRY/fogmesh:TAG)")
	sites := fs.String("sites", "default", "sites, comma separated: one agent DaemonSet per site, on the nodes labelled fogmesh.io/site=SITE")
	fs.StringVar(&o.ControlAddr, "control-addr", "", "sync address the agents dial (default fogmesh-control.NAMESPACE.svc:7071); for edge nodes without cluster Services")
	fs.StringVar(&o.JoinSecret, "join-secret", "fogmesh-join", "Secret holding each node's one-time join token under the node's name")
	noCapture := fs.Bool("no-capture", false, "agents without transparent capture: non-root, no capabilities, virtual IPs only")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return cli.Usagef("install takes no arguments, got %q", fs.Args())
	}
	o.NoCapture = *noCapture
	r := strings.TrimRight(*registry, "/")
	if o.AgentImage == "" {
		o.AgentImage = r + "/fogmesh-agent:" + *tag
	}
	if o.ControlImage == "" {
		o.ControlImage = r + "/fogmesh:" + *tag
	}
	for _, s := range strings.Split(*sites, ",") {
		o.Sites = append(o.Sites, strings.TrimSpace(s))
	}
	if err := deploy.Render(w, o); err != nil {
		return cli.Usagef("%v", err)
	}
	return nil
}
