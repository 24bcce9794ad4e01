// Package deploy holds fogmesh's Kubernetes manifests, a kustomize base
// (kubectl apply -k deploy/), and renders them for `fogmesh install` with
// a namespace, images and sites of the user's choosing, so that the
// manifests the base applies and the ones the CLI prints are the same
// files. Only cmd/fogmesh imports it: the agent links none of this.
package deploy

import "embed"

// Files are the base's manifests in the order they are applied.
var Files = []string{"crds/fogmesh.io.yaml", "namespace.yaml", "rbac.yaml", "configmap.yaml", "control.yaml", "agent.yaml"}

//go:embed *.yaml crds/*.yaml
var fsys embed.FS
