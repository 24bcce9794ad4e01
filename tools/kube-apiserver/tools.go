//go:build tools

// Package tools pins the kube-apiserver that fogmesh's Kubernetes tests run
// against; it is its own module so that the main module never requires
// k8s.io/kubernetes.
package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
