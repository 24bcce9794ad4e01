package transport

import (
	"fmt"

	"github.com/VictoriaMetrics/metrics"
)

// Stream results, the result label of fogmesh_mesh_streams_total.
const (
	resultOK         = "ok"
	resultRefused    = "refused"     // unknown destination or bad header (status 1, 3)
	resultDialFailed = "dial_failed" // the workload could not be reached (status 2)
	resultError      = "error"       // transport failure, no status exchanged
	resultDenied     = "denied"      // an authorization policy denied it (status 4)
)

// meshMetrics are the counters of one side (dir "in" for the server, "out"
// for the client). Server and client may share a metrics.Set: their series
// differ by the dir label.
type meshMetrics struct {
	streams  map[string]*metrics.Counter // by result
	sessions *metrics.Gauge              // open yamux sessions
	bad      *metrics.Counter            // streams rejected for a bad header (in only)
	direct   *metrics.Counter            // streams with a TCP connection of their own (direct.go)
	// handshakes in progress, each holding a slot of the server's
	// identity.HandshakeGate (in only)
	handshakes *metrics.Gauge
	// QUIC Initials answered by a Retry, past half a QUIC server's
	// handshake bound (quichandshake.go; in only)
	retries *metrics.Counter
	set     *metrics.Set
	dir     string
}

// tlsFailure counts a refused TLS handshake:
// fogmesh_tls_handshake_failures_total{port="mesh",dir,reason}.
func (m *meshMetrics) tlsFailure(reason string) {
	m.set.GetOrCreateCounter(fmt.Sprintf(`fogmesh_tls_handshake_failures_total{port="mesh",dir=%q,reason=%q}`, m.dir, reason)).Inc()
}

// TLSFailures returns the count of refused mesh handshakes for reason and
// dir ("in" or "out") in set, for tests and status pages.
func TLSFailures(set *metrics.Set, dir, reason string) uint64 {
	return set.GetOrCreateCounter(fmt.Sprintf(`fogmesh_tls_handshake_failures_total{port="mesh",dir=%q,reason=%q}`, dir, reason)).Get()
}

func newMeshMetrics(set *metrics.Set, dir string) *meshMetrics {
	if set == nil {
		set = metrics.NewSet()
	}
	m := &meshMetrics{
		streams:  make(map[string]*metrics.Counter),
		sessions: set.GetOrCreateGauge(fmt.Sprintf(`fogmesh_mesh_sessions{dir=%q}`, dir), nil),
		bad:      set.GetOrCreateCounter(`fogmesh_mesh_bad_streams_total`),
		direct:   set.GetOrCreateCounter(fmt.Sprintf(`fogmesh_mesh_direct_streams_total{dir=%q}`, dir)),
		set:      set,
		dir:      dir,
	}
	if dir == "in" {
		m.handshakes = set.GetOrCreateGauge(`fogmesh_tls_handshakes_in_progress{port="mesh"}`, nil)
		m.retries = set.GetOrCreateCounter(`fogmesh_mesh_quic_retries_total`)
	}
	for _, r := range []string{resultOK, resultRefused, resultDialFailed, resultError, resultDenied} {
		m.streams[r] = set.GetOrCreateCounter(fmt.Sprintf(`fogmesh_mesh_streams_total{dir=%q,result=%q}`, dir, r))
	}
	for _, r := range []string{CutRevoked, CutExpired, CutBuffer} { // shown at 0 before the first cut
		set.GetOrCreateCounter(fmt.Sprintf(`fogmesh_mesh_sessions_cut_total{dir=%q,reason=%q}`, dir, r))
	}
	return m
}

// resultOf maps a status to its result label.
func resultOf(s Status) string {
	switch s {
	case StatusOK:
		return resultOK
	case StatusDialFailed:
		return resultDialFailed
	case StatusDenied:
		return resultDenied
	}
	return resultRefused
}
