package agent

import (
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/fogmesh/fogmesh/internal/flowwin"
)

// The agent's own metrics: the counters of agentMetrics and the gauges
// that read its state, registered once by New.

func (a *Agent) initMetrics() {
	m := a.cfg.Metrics
	a.m = agentMetrics{
		connOK:           m.NewCounter(`fogmesh_agent_connections_total{result="ok"}`),
		connNoEP:         m.NewCounter(`fogmesh_agent_connections_total{result="no_endpoint"}`),
		connFailed:       m.NewCounter(`fogmesh_agent_connections_total{result="dial_failed"}`),
		dialFailures:     m.NewCounter(`fogmesh_agent_dial_failures_total`),
		failovers:        m.NewCounter(`fogmesh_agent_failovers_total`),
		updates:          m.NewCounter(`fogmesh_agent_config_updates_total`),
		nacks:            m.NewCounter(`fogmesh_agent_config_rejected_total`),
		listenErrors:     m.NewCounter(`fogmesh_agent_listen_errors_total`),
		vipBindFailures:  m.NewCounter(`fogmesh_agent_vip_bind_failures_total`), // each failed bind, retries included
		mqttBad:          m.NewCounter(`fogmesh_agent_mqtt_bad_connect_total`),
		retriesDenied:    m.NewCounter(`fogmesh_agent_retries_denied_total`),
		outlierEjections: m.NewCounter(`fogmesh_agent_outlier_ejections_total`),
		ejectionsSkipped: m.NewCounter(`fogmesh_agent_outlier_ejections_skipped_total`),
		overflows:        m.NewCounter(`fogmesh_agent_circuit_breaker_overflows_total`),
		sessionBinds:     m.NewCounter(`fogmesh_agent_session_binds_total`),
		// this agent's own session bindings evicted past their bound, and
		// bindings dropped before they were sent upstream (session.go).
		sessionEvictions: m.NewCounter(`fogmesh_agent_session_evictions_total`),
		sessionsDropped:  m.NewCounter(`fogmesh_agent_sessions_dropped_total`),
		gossipDeaths:     m.NewCounter(`fogmesh_agent_gossip_peer_deaths_total`),
		// announcements of members that are no site peer at their
		// registered address, ignored (gossip.go, allowGossip).
		gossipIgnored: m.NewCounter(`fogmesh_agent_gossip_ignored_members_total`),
		// deaths gossip reported of peers that answered this agent's
		// ping, ignored (gossip.go, confirmDeath).
		gossipDisproved: m.NewCounter(`fogmesh_agent_gossip_deaths_disproved_total`),
		panics:          m.NewCounter(`fogmesh_agent_panics_total`),
		renewals:        m.NewCounter(`fogmesh_agent_certificate_renewals_total`),
		certExpired:     m.NewCounter(`fogmesh_agent_node_certificate_expired_total`),
		unvouched:       m.NewCounter(`fogmesh_agent_authz_unvouched_source_total`),
		scopeMisses:     m.NewCounter(`fogmesh_agent_scope_lookup_timeouts_total`),
		// mesh streams refused in secure mode for a service this agent
		// did not hold within scopeWait (authzconn.go).
		streamsUnknownService: m.NewCounter(`fogmesh_agent_streams_unknown_service_total`),
	}
	// VIP:ports the agent cannot bind now (another process holds them).
	m.NewGauge(`fogmesh_agent_vip_bind_failures`, func() float64 { return float64(len(a.VIPBindFailures())) })
	m.NewGauge(`fogmesh_agent_active_connections`, func() float64 { return float64(a.active.Load()) })
	// What the HTTP/2 streams' receive windows (upstream responses, client
	// request bodies) may still grow by (flowwin.Process; process-wide).
	m.NewGauge(`fogmesh_agent_h2_window_budget_free_bytes`, func() float64 { return float64(flowwin.Process.Left()) })
	m.NewGauge(`fogmesh_agent_control_connected`, func() float64 {
		if a.connected.Load() {
			return 1
		}
		return 0
	})
	m.NewGauge(`fogmesh_agent_gossip_members`, func() float64 { // alive site peers, this node included; 0 with gossip off
		if a.gossip == nil {
			return 0
		}
		return float64(len(a.gossip.Members()))
	})
	// Attested workload identities with no valid SVID now (cut off past
	// the autonomy window, or never issued), and how often one ran out.
	m.NewGauge(`fogmesh_agent_svid_missing`, func() float64 { n, _ := a.svids.Missing(); return float64(n) })
	m.NewGauge(`fogmesh_agent_svid_expirations`, func() float64 { _, n := a.svids.Missing(); return float64(n) })
	// Seconds the node certificate has left (negative: expired), for an
	// alert well before a cut-off site runs out (docs/offline.md).
	m.NewGauge(`fogmesh_agent_node_certificate_expiry_seconds`, func() float64 {
		if c := a.NodeCertificate(); c != nil {
			return time.Until(c.NotAfter).Seconds()
		}
		return 0
	})
	// A scoped agent's scope (declared, own and learnt entries; 0: every
	// service).
	m.NewGauge(`fogmesh_agent_scope_entries`, func() float64 {
		a.scope.mu.Lock()
		defer a.scope.mu.Unlock()
		if a.scope.dropped {
			return 0
		}
		return float64(len(a.scope.entries))
	})
	m.NewGauge(`fogmesh_agent_config_version`, func() float64 {
		a.mu.Lock()
		defer a.mu.Unlock()
		return float64(a.cfgVersion)
	})
}

type agentMetrics struct {
	connOK, connNoEP, connFailed, dialFailures, failovers, updates, nacks, listenErrors, mqttBad, retriesDenied *metrics.Counter
	outlierEjections, ejectionsSkipped, overflows, sessionBinds, gossipDeaths, panics, renewals, unvouched      *metrics.Counter
	certExpired, scopeMisses, vipBindFailures, streamsUnknownService, sessionEvictions, sessionsDropped         *metrics.Counter
	gossipIgnored, gossipDisproved                                                                              *metrics.Counter
}
