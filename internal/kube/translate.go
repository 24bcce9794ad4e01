// Package kube makes a Kubernetes API (a kube-apiserver, or any endpoint
// that speaks its API, such as KubeEdge's metaServer) a source of
// fogmesh's registry: Services, EndpointSlices, Nodes and Pods, and the
// Istio and fogmesh custom resources, watched with client-go informers
// and mapped onto fogmesh's model. It runs in the control plane only:
// the agent's import graph stays free of client-go
// (cmd/fogmesh-agent/deps_test.go).
//
// This file is the mapping, without I/O: Kubernetes objects in, fogmesh
// objects and warnings out.
package kube

import (
	"cmp"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/control"
)

// Well-known node labels.
const (
	LabelRegion = "topology.kubernetes.io/region"
	LabelZone   = "topology.kubernetes.io/zone"
	// LabelSite is fogmesh's own site label, the first one looked at.
	LabelSite = "fogmesh.io/site"
	// LabelOpenYurtPool is the node pool OpenYurt puts a node in (and
	// the older desired-pool label).
	LabelOpenYurtPool        = "apps.openyurt.io/nodepool"
	LabelOpenYurtDesiredPool = "apps.openyurt.io/desired-nodepool"
	// LabelKubeEdgeNodeGroup is the node group KubeEdge puts a node in.
	LabelKubeEdgeNodeGroup = "apps.kubeedge.io/belonging-to"
)

// DefaultSiteLabels are the labels that name a node's site, in order.
var DefaultSiteLabels = []string{LabelSite, LabelOpenYurtPool, LabelOpenYurtDesiredPool, LabelKubeEdgeNodeGroup}

// DefaultMaxServicePorts bounds the ports of a Service taken from the
// cluster: each is a listener on every agent, so a Service with
// thousands of ports is refused, not served.
const DefaultMaxServicePorts = 256

// Mapper maps Kubernetes objects onto fogmesh's model. Its zero value
// works.
type Mapper struct {
	// SiteLabels name a node's site, the first present wins (default
	// DefaultSiteLabels). Two of them naming different sites is
	// reported.
	SiteLabels []string
	// MaxServicePorts: a Service with more ports is refused (default
	// DefaultMaxServicePorts).
	MaxServicePorts int
	// IstioRootNamespace: see api.DecodeOptions.
	IstioRootNamespace string
}

func (m *Mapper) siteLabels() []string {
	if len(m.SiteLabels) > 0 {
		return m.SiteLabels
	}
	return DefaultSiteLabels
}

// labelValue is what fogmesh accepts as a site, region or zone name.
var labelValue = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// Topology returns a node's site, region and zone from its labels, and a
// warning for labels that contradict each other or are no valid name.
// Missing labels leave the field empty: the agent's own setting stays.
func (m *Mapper) Topology(n *corev1.Node) (control.NodeTopology, []string) {
	var t control.NodeTopology
	var warns []string
	get := func(label string) string {
		v := n.Labels[label]
		if v == "" {
			return ""
		}
		if !labelValue.MatchString(v) {
			warns = append(warns, fmt.Sprintf("node %s: label %s=%q is not a DNS label; ignored", n.Name, label, v))
			return ""
		}
		return v
	}
	var from string
	for _, l := range m.siteLabels() {
		v := get(l)
		switch {
		case v == "":
		case t.Site == "":
			t.Site, from = v, l
		case v != t.Site:
			warns = append(warns, fmt.Sprintf("node %s: labels %s=%q and %s=%q name different sites; %s is used", n.Name, from, t.Site, l, v, from))
		}
	}
	t.Region = get(LabelRegion)
	t.Zone = get(LabelZone)
	return t, warns
}

// portName is the fogmesh name of a Kubernetes Service port: its name, or
// "port-<number>" for the one unnamed port a Service may have.
func portName(name string, port int32) string {
	if name == "" {
		return fmt.Sprintf("port-%d", port)
	}
	return name
}

// Protocol maps a Service port onto a fogmesh protocol: appProtocol
// first (Kubernetes' and IANA's names), then Istio's port-name prefixes
// (http-, http2-, grpc-, mqtt-), else tcp (udp for UDP ports). The
// warning names an appProtocol fogmesh does not know.
func Protocol(p corev1.ServicePort) (string, string) {
	if p.Protocol == corev1.ProtocolUDP {
		return "udp", ""
	}
	if p.AppProtocol != nil && *p.AppProtocol != "" {
		switch ap := strings.ToLower(*p.AppProtocol); ap {
		case "http", "http/1.1", "kubernetes.io/http":
			return "http", ""
		case "h2c", "http2", "kubernetes.io/h2c":
			return "http2", ""
		case "grpc", "kubernetes.io/grpc":
			return "grpc", ""
		case "mqtt":
			return "mqtt", ""
		case "tcp", "https", "tls", "kubernetes.io/ws", "kubernetes.io/wss", "mysql", "redis", "mongo":
			return "tcp", ""
		default:
			return "tcp", fmt.Sprintf("appProtocol %q is not known; tcp is used", *p.AppProtocol)
		}
	}
	prefix, _, _ := strings.Cut(strings.ToLower(p.Name), "-")
	switch prefix {
	case "http", "http2", "grpc", "mqtt":
		return prefix, ""
	}
	return "tcp", ""
}

// Service maps a Kubernetes Service. ExternalName Services, SCTP ports
// and Services with more ports than MaxServicePorts are refused with an
// error; a port fogmesh cannot serve as asked gives a warning.
func (m *Mapper) Service(s *corev1.Service) (*api.Service, []string, error) {
	where := "service " + s.Namespace + "/" + s.Name
	if s.Spec.Type == corev1.ServiceTypeExternalName {
		return nil, nil, fmt.Errorf("%s: type ExternalName has no endpoints to serve", where)
	}
	maxPorts := m.MaxServicePorts
	if maxPorts <= 0 {
		maxPorts = DefaultMaxServicePorts
	}
	if len(s.Spec.Ports) > maxPorts {
		return nil, nil, fmt.Errorf("%s: %d ports, more than the limit of %d (each is a listener on every agent)", where, len(s.Spec.Ports), maxPorts)
	}
	if len(s.Spec.Ports) == 0 {
		return nil, nil, fmt.Errorf("%s: no ports", where)
	}
	var warns []string
	out := &api.Service{APIVersion: api.APIVersion, Kind: api.KindService,
		Meta: api.Meta{Name: s.Name, Namespace: s.Namespace, Labels: map[string]string{api.LabelSource: api.SourceKubernetes}}}
	if s.Spec.ClusterIP == corev1.ClusterIPNone {
		out.Meta.Labels[api.LabelHeadless] = "true"
	} else if len(s.Spec.ClusterIPs) > 0 || s.Spec.ClusterIP != "" {
		// The ClusterIPs, which agents that capture redirect into
		// themselves (README "Transparent capture").
		out.Spec.ClusterIP, out.Spec.ClusterIPs = s.Spec.ClusterIP, slices.Clone(s.Spec.ClusterIPs)
	}
	for _, p := range s.Spec.Ports {
		if p.Protocol == corev1.ProtocolSCTP {
			return nil, nil, fmt.Errorf("%s: port %d: SCTP is not supported", where, p.Port)
		}
		proto, w := Protocol(p)
		if w != "" {
			warns = append(warns, fmt.Sprintf("%s: port %s: %s", where, portName(p.Name, p.Port), w))
		}
		out.Spec.Ports = append(out.Spec.Ports, api.ServicePort{Name: portName(p.Name, p.Port), Port: int(p.Port), Protocol: proto})
	}
	if err := out.Validate(); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", where, err)
	}
	return out, warns, nil
}

// Cluster is what Endpoints looks objects up in.
type Cluster struct {
	// Nodes are the cluster's node names.
	Nodes map[string]bool
	// Pods by "namespace/name".
	Pods map[string]*corev1.Pod
	// PodsByIP are Pods by their own addresses (func PodsByIP; nil:
	// Endpoints makes it).
	PodsByIP map[netip.Addr]*corev1.Pod
}

// ownIP reports whether p has an address of its own, one no other pod
// holds meanwhile: not hostNetwork (the node's), not finished (given to
// another).
func ownIP(p *corev1.Pod) bool {
	return !p.Spec.HostNetwork && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed
}

// PodsByIP indexes pods by their own addresses.
func PodsByIP(pods map[string]*corev1.Pod) map[netip.Addr]*corev1.Pod {
	out := map[netip.Addr]*corev1.Pod{}
	for _, p := range pods {
		if !ownIP(p) {
			continue
		}
		for _, ip := range append([]corev1.PodIP{{IP: p.Status.PodIP}}, p.Status.PodIPs...) {
			if a, err := netip.ParseAddr(ip.IP); err == nil {
				out[a.Unmap()] = p
			}
		}
	}
	return out
}

// EndpointName is the fogmesh name of the endpoint of service svc at
// address: stable while the address stays, whichever slice holds it.
func EndpointName(svc, addr string) string {
	h := fnv.New64a()
	h.Write([]byte(svc + "/" + addr))
	prefix := strings.TrimRight(svc[:min(len(svc), 44)], "-")
	return fmt.Sprintf("%s-%016x", prefix, h.Sum64())
}

// Endpoints maps the EndpointSlices of Service svc (already mapped, and
// its Kubernetes original k) onto fogmesh endpoints. Endpoints that
// cannot be served (no address, an FQDN slice, no node or a node the
// cluster does not have, a port that resolves to no number) are left out
// with a warning. It also fills svc's allowed service accounts with its
// pods'.
func Endpoints(k *corev1.Service, svc *api.Service, slices_ []*discoveryv1.EndpointSlice, c Cluster) ([]*api.Endpoint, []string) {
	var warns []string
	byName := map[string]*api.Endpoint{}
	accounts := map[string]bool{}
	// Service port name → its named target port, for slices without port numbers.
	targetName := map[string]string{}
	for _, p := range k.Spec.Ports {
		if p.TargetPort.StrVal != "" {
			targetName[portName(p.Name, p.Port)] = p.TargetPort.StrVal
		}
	}
	if c.PodsByIP == nil {
		c.PodsByIP = PodsByIP(c.Pods)
	}
	sort.Slice(slices_, func(i, j int) bool { return slices_[i].Name < slices_[j].Name })
	for _, sl := range slices_ {
		where := "endpointslice " + sl.Namespace + "/" + sl.Name
		if sl.AddressType == discoveryv1.AddressTypeFQDN {
			warns = append(warns, where+": addressType FQDN is not supported; skipped")
			continue
		}
		for _, e := range sl.Endpoints {
			if len(e.Addresses) == 0 {
				warns = append(warns, where+": an endpoint without addresses; skipped")
				continue
			}
			addr, err := netip.ParseAddr(e.Addresses[0])
			if err != nil {
				warns = append(warns, fmt.Sprintf("%s: address %q: %v; skipped", where, e.Addresses[0], err))
				continue
			}
			if e.NodeName == nil || *e.NodeName == "" {
				warns = append(warns, fmt.Sprintf("%s: endpoint %s names no node; skipped (fogmesh reaches a pod through its node's agent)", where, addr))
				continue
			}
			node := *e.NodeName
			if !c.Nodes[node] {
				warns = append(warns, fmt.Sprintf("%s: endpoint %s names node %q, which the cluster does not have; skipped", where, addr, node))
				continue
			}
			// A slice written by hand (a Service without selector) may
			// name any pod; one of another namespace is not this
			// namespace's to serve: its authorization policies would be
			// bypassed through this Service.
			if p := c.PodsByIP[addr.Unmap()]; p != nil && p.Namespace != sl.Namespace {
				warns = append(warns, fmt.Sprintf("%s: endpoint %s is the address of pod %s/%s of another namespace; skipped", where, addr, p.Namespace, p.Name))
				continue
			}
			var pod *corev1.Pod
			if r := e.TargetRef; r != nil && r.Kind == "Pod" {
				if r.Namespace != "" && r.Namespace != sl.Namespace {
					warns = append(warns, fmt.Sprintf("%s: endpoint %s refers to pod %s/%s of another namespace; skipped", where, addr, r.Namespace, r.Name))
					continue
				}
				pod = c.Pods[sl.Namespace+"/"+r.Name]
			}
			ep := &api.Endpoint{APIVersion: api.APIVersion, Kind: api.KindEndpoint,
				Meta: api.Meta{Name: EndpointName(svc.Meta.Name, addr.String()), Namespace: svc.Meta.Namespace,
					Labels: map[string]string{api.LabelSource: api.SourceKubernetes}},
				Spec: api.EndpointSpec{Service: svc.Meta.Name, Node: node, Address: addr.String(), ServiceAccount: "default"},
				// Ready (nil: unknown, taken as ready, as kube-proxy does).
				Status: api.EndpointStatus{Healthy: e.Conditions.Ready == nil || *e.Conditions.Ready},
			}
			if e.Hostname != nil && *e.Hostname != "" {
				// A headless Service's pod with spec.hostname (a
				// StatefulSet's): its own DNS name.
				if h := *e.Hostname; api.ValidLabel(h) {
					ep.Spec.Hostname = h
				} else {
					warns = append(warns, fmt.Sprintf("%s: endpoint %s: hostname %q is not a DNS label; ignored", where, addr, h))
				}
			}
			if pod != nil {
				if pod.Spec.ServiceAccountName != "" {
					ep.Spec.ServiceAccount = pod.Spec.ServiceAccountName
				}
				// The pod's labels select it in subsets (DestinationRule).
				for k, v := range pod.Labels {
					if k != api.LabelSource {
						ep.Meta.Labels[k] = v
					}
				}
			}
			for _, sp := range sl.Ports {
				name := ""
				if sp.Name != nil {
					name = *sp.Name
				}
				var svcPort api.ServicePort
				found := false
				for _, p := range svc.Spec.Ports {
					if p.Name == name || (name == "" && len(svc.Spec.Ports) == 1) {
						svcPort, found = p, true
						break
					}
				}
				if !found {
					warns = append(warns, fmt.Sprintf("%s: port %q is not a port of service %s; skipped", where, name, svc.Meta.Key()))
					continue
				}
				port := 0
				if sp.Port != nil {
					port = int(*sp.Port)
				} else if tn := targetName[svcPort.Name]; tn != "" && pod != nil {
					port = containerPort(pod, tn)
				}
				if port < 1 || port > 65535 {
					warns = append(warns, fmt.Sprintf("%s: endpoint %s: port %s resolves to no port number; skipped", where, addr, svcPort.Name))
					continue
				}
				ep.Spec.Ports = append(ep.Spec.Ports, api.EndpointPort{Name: svcPort.Name, Port: port})
			}
			if len(ep.Spec.Ports) == 0 {
				continue
			}
			if err := ep.Validate(); err != nil {
				warns = append(warns, fmt.Sprintf("%s: endpoint %s: %v; skipped", where, addr, err))
				continue
			}
			// The same address in two slices (while a slice is replaced):
			// a ready copy wins.
			if old := byName[ep.Meta.Name]; old != nil && old.Status.Healthy {
				continue
			}
			byName[ep.Meta.Name] = ep
			accounts[ep.Spec.ServiceAccount] = true
		}
	}
	out := make([]*api.Endpoint, 0, len(byName))
	for _, ep := range byName {
		out = append(out, ep)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Meta.Name < out[j].Meta.Name })
	if len(accounts) > 0 {
		sas := make([]string, 0, len(accounts))
		for a := range accounts {
			sas = append(sas, a)
		}
		slices.Sort(sas)
		svc.Spec.Identity = &api.ServiceIdentity{ServiceAccounts: sas}
	}
	return out, warns
}

// containerPort is the number of the pod's container port called name.
func containerPort(p *corev1.Pod, name string) int {
	for _, c := range p.Spec.Containers {
		for _, cp := range c.Ports {
			if cp.Name == name {
				return int(cp.ContainerPort)
			}
		}
	}
	return 0
}

// Custom maps a custom resource (its JSON: an Istio VirtualService,
// DestinationRule, AuthorizationPolicy or PeerAuthentication, or a
// fogmesh kind) with the translation and warnings of `fogmesh apply`.
// Only what a user wrote is kept: metadata's name, namespace, labels
// and annotations, and the spec (status and the apiserver's metadata
// are not the user's).
func (m *Mapper) Custom(raw []byte) ([]api.Object, []string, error) {
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, nil, fmt.Errorf("json: %w", err)
	}
	meta, _ := doc["metadata"].(map[string]any)
	keep := map[string]any{}
	for _, k := range []string{"name", "namespace", "labels", "annotations"} {
		if v, ok := meta[k]; ok {
			keep[k] = v
		}
	}
	if doc["apiVersion"] == api.APIVersion {
		delete(keep, "annotations") // fogmesh's metadata has none
	}
	clean := map[string]any{"apiVersion": doc["apiVersion"], "kind": doc["kind"], "metadata": keep, "spec": doc["spec"]}
	b, err := json.Marshal(clean)
	if err != nil {
		return nil, nil, err
	}
	objs, warns, err := api.DecodeWithOptions(b, api.DecodeOptions{IstioRootNamespace: m.IstioRootNamespace})
	if err != nil {
		return nil, nil, err
	}
	// Whoever may write custom resources in a namespace configures that
	// namespace only: an Istio host of another namespace, or a mesh-wide
	// policy outside the root namespace, would route or deny another
	// namespace's services.
	ns, _ := keep["namespace"].(string)
	ns = api.NamespaceOr(ns)
	root := cmp.Or(m.IstioRootNamespace, api.IstioRootNamespace)
	for _, o := range objs {
		switch o.GetKind() {
		case api.KindNode, api.KindService, api.KindEndpoint:
			return nil, nil, fmt.Errorf("kind %s does not come from custom resources (Nodes, Services and EndpointSlices do)", o.GetKind())
		}
		if on := api.NamespaceOr(o.GetMeta().Namespace); on != ns {
			return nil, nil, fmt.Errorf("translated %s %s is in namespace %s: a cluster resource of namespace %s configures its own namespace only", o.GetKind(), o.GetMeta().Name, on, ns)
		}
		if p, ok := o.(*api.AuthorizationPolicy); ok && p.Spec.MeshWide && ns != root {
			return nil, nil, fmt.Errorf("meshWide: a cluster resource of namespace %s configures its own namespace only (mesh-wide policies live in the root namespace %s)", ns, root)
		}
		md := o.GetMeta()
		if md.Labels == nil {
			md.Labels = map[string]string{}
		}
		md.Labels[api.LabelSource] = api.SourceKubernetes
	}
	return objs, warns, nil
}

// PodIdentities returns, per node of nodes, the addresses and service
// accounts of the pods the cluster runs there (api.NodeSpec.Pods), sorted
// by address: pods with an IP of their own (not hostNetwork, which share
// the node's), not finished (a finished pod's IP may be given to another).
// A pod whose namespace or account is not a DNS label, or past
// api.MaxNodePods on its node, is left out with a warning.
func PodIdentities(pods map[string]*corev1.Pod, nodes map[string]bool) (map[string][]api.PodIdentity, []string) {
	out := map[string][]api.PodIdentity{}
	var warns []string
	for key, p := range pods {
		if !nodes[p.Spec.NodeName] || !ownIP(p) {
			continue
		}
		sa := p.Spec.ServiceAccountName
		if sa == "" {
			sa = "default"
		}
		if !api.ValidName(p.Namespace) || !api.ValidName(sa) {
			warns = append(warns, fmt.Sprintf("pod %s: namespace or service account %q is not a DNS label; the pod has no identity in the mesh", key, sa))
			continue
		}
		ips := map[string]bool{}
		if p.Status.PodIP != "" {
			ips[p.Status.PodIP] = true
		}
		for _, ip := range p.Status.PodIPs {
			ips[ip.IP] = true
		}
		for ip := range ips {
			a, err := netip.ParseAddr(ip)
			if err != nil {
				warns = append(warns, fmt.Sprintf("pod %s: address %q is not an IP address; skipped", key, ip))
				continue
			}
			out[p.Spec.NodeName] = append(out[p.Spec.NodeName], api.PodIdentity{Address: a.Unmap().String(), Namespace: p.Namespace, ServiceAccount: sa})
		}
	}
	for node, l := range out {
		slices.SortFunc(l, func(a, b api.PodIdentity) int {
			return cmp.Or(strings.Compare(a.Address, b.Address), strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.ServiceAccount, b.ServiceAccount))
		})
		if len(l) > api.MaxNodePods {
			warns = append(warns, fmt.Sprintf("node %s: %d pods, at most %d have an identity in the mesh", node, len(l), api.MaxNodePods))
			l = l[:api.MaxNodePods]
		}
		out[node] = l
	}
	return out, warns
}
