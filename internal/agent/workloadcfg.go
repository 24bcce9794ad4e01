package agent

import (
	"fmt"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
)

// A workload of the agent's config (Config.Workloads): its type, its
// health check, and how it becomes the endpoint the agent registers.

// Workload is a local instance of a service.
type Workload struct {
	// Name becomes the endpoint name (default <service>-<node>).
	Name      string `json:"name,omitempty"`
	Service   string `json:"service"`
	Namespace string `json:"namespace,omitempty"`
	// ServiceAccount is the workload's identity within its namespace
	// (default: the service name); see api.WorkloadID.
	ServiceAccount string `json:"serviceAccount,omitempty"`
	// Labels select the workload into subsets (e.g. version: v2).
	Labels map[string]string `json:"labels,omitempty"`
	// Address the instance listens on (default 127.0.0.1).
	Address string             `json:"address,omitempty"`
	Ports   []api.EndpointPort `json:"ports"`
	Check   Check              `json:"check,omitempty"`
	// Attest selects the local processes (by uid, gid, executable path)
	// that may fetch this workload's SVID from the Workload API socket
	// and that a client connection from Address must come from to carry
	// this workload's identity (localid.go). Without it, no process gets
	// the SVID and any client from Address has the identity.
	Attest *Attest `json:"attest,omitempty"`
}

// Check is an active health check.
type Check struct {
	// Type is tcp (default: connect to the first port), http (GET Path,
	// 2xx/3xx is healthy), grpc (grpc.health.v1.Health/Check over
	// cleartext HTTP/2; SERVING is healthy) or none.
	Type string `json:"type,omitempty"`
	Path string `json:"path,omitempty"`
	// GRPCService is the service name a grpc check asks about (default
	// "": the server as a whole).
	GRPCService string `json:"grpcService,omitempty"`
	// Port names the workload port to check (default the first).
	Port    string   `json:"port,omitempty"`
	Timeout Duration `json:"timeout,omitempty"` // default 1s
}

// normalize fills defaults and validates a workload through the endpoint it
// becomes.
func (w *Workload) normalize(node string) error {
	w.Namespace = api.NamespaceOr(w.Namespace)
	if w.Name == "" {
		w.Name = w.Service + "-" + node
	}
	if w.Address == "" {
		w.Address = "127.0.0.1"
	}
	switch w.Check.Type {
	case "":
		w.Check.Type = "tcp"
	case "tcp", "http", "grpc", "none":
	default:
		return fmt.Errorf("check.type: %q is not one of tcp, http, grpc, none", w.Check.Type)
	}
	if w.Check.GRPCService != "" && w.Check.Type != "grpc" {
		return fmt.Errorf("check.grpcService: only for check.type grpc")
	}
	if w.Check.Timeout <= 0 {
		w.Check.Timeout = Duration(time.Second)
	}
	if err := w.Attest.Validate(); err != nil {
		return fmt.Errorf("attest.%w", err)
	}
	e := w.endpoint(node, true)
	if err := e.Validate(); err != nil {
		return err
	}
	w.Ports = e.Spec.Ports // defaults filled
	if w.Check.Port == "" {
		w.Check.Port = w.Ports[0].Name
	} else if _, ok := e.Port(w.Check.Port); !ok {
		return fmt.Errorf("check.port: no port named %q", w.Check.Port)
	}
	return nil
}

func (w *Workload) endpoint(node string, healthy bool) api.Endpoint {
	return api.Endpoint{
		APIVersion: api.APIVersion, Kind: api.KindEndpoint,
		Meta: api.Meta{Name: w.Name, Namespace: w.Namespace, Labels: w.Labels},
		Spec: api.EndpointSpec{Service: w.Service, Node: node, Address: w.Address,
			Ports: append([]api.EndpointPort(nil), w.Ports...), ServiceAccount: w.ServiceAccount},
		Status: api.EndpointStatus{Healthy: healthy},
	}
}
