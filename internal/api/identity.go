package api

import "fmt"

// DefaultTrustDomain is the SPIFFE trust domain when the control plane is
// not given one.
const DefaultTrustDomain = "fogmesh.local"

// WorkloadID is the SPIFFE ID of a workload identity:
// spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>, the form
// Istio and SPIRE users know.
func WorkloadID(trustDomain, namespace, serviceAccount string) string {
	return fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", trustDomain, NamespaceOr(namespace), serviceAccount)
}

// NodeID is the SPIFFE ID of a node's agent:
// spiffe://<trustDomain>/site/<site>/node/<node>.
func NodeID(trustDomain, site, node string) string {
	return fmt.Sprintf("spiffe://%s/site/%s/node/%s", trustDomain, site, node)
}

// EndpointID is the workload identity of an endpoint.
func EndpointID(trustDomain string, e *Endpoint) string {
	sa := e.Spec.ServiceAccount
	if sa == "" {
		sa = e.Spec.Service
	}
	return WorkloadID(trustDomain, e.Meta.Namespace, sa)
}
