package agent

import (
	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/transport"
)

// clusterEndpoint is the endpoint h names when a cluster runs it on this
// node (api.LabelSource, see buildView), nil otherwise.
func (a *Agent) clusterEndpoint(h transport.Header) *api.Endpoint {
	sv := a.view.Load().services[h.Namespace+"/"+h.Service]
	if sv == nil {
		return nil
	}
	for _, ev := range sv.endpoints {
		if ev.local && ev.ep.Meta.Name == h.Endpoint && ev.ep.Meta.Labels[api.LabelSource] != "" {
			return ev.ep
		}
	}
	return nil
}

// localEndpoint is the endpoint of this node that h names: a registered
// workload, or a pod a cluster runs here.
func (a *Agent) localEndpoint(h transport.Header, ws *workloadState) (api.Endpoint, bool) {
	if ws != nil && ws.w.Service == h.Service && ws.w.Namespace == h.Namespace {
		return ws.w.endpoint(a.cfg.Node.Name, true), true
	}
	if ce := a.clusterEndpoint(h); ce != nil {
		return *ce, true
	}
	return api.Endpoint{}, false
}
