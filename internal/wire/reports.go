// What a heartbeat reports: paths, bind failures, request counters.

package wire

import "time"

// MaxPathReports bounds the paths one heartbeat reports.
const MaxPathReports = 1024

// MaxVIPBindFailures bounds the bind failures one heartbeat reports.
const MaxVIPBindFailures = 256

// PathReport is an agent's path to one peer agent.
type PathReport struct {
	Peer      string    `json:"peer"`
	Kind      string    `json:"kind"`              // direct, punched or relayed
	Carrier   string    `json:"carrier,omitempty"` // tcp or quic
	Relay     string    `json:"relay,omitempty"`
	Remote    string    `json:"remote,omitempty"`
	RTTMillis float64   `json:"rttMs,omitempty"`
	BytesOut  uint64    `json:"bytesOut,omitempty"`
	BytesIn   uint64    `json:"bytesIn,omitempty"`
	Since     time.Time `json:"since"`
}

// Bounds of a StatsReport: at most MaxStatRows rows an agent tracks and
// reports (further ones are counted in Dropped), and MaxStatBounds
// latency bucket bounds.
const (
	MaxStatRows   = 256
	MaxStatBounds = 32
	// MaxNodeStatRows bounds the rows of one region heartbeat's NodeStats
	// (about 220 KB: a region link may be slow); nodes left out go in a
	// later heartbeat.
	MaxNodeStatRows = 1024
)

// NodeStatsReport is one node's StatsReport as a regional control plane
// passes it up.
type NodeStatsReport struct {
	Node   string      `json:"node"`
	Report StatsReport `json:"report"`
}

// StatsReport is an agent's cumulative golden request counters as its
// client side records them (fogmesh_http_requests_total and
// fogmesh_http_request_duration_seconds), summed over routes and
// endpoints into one row per destination service, destination node,
// source service, tier and path kind. Counters only grow while the agent
// runs; the receiver takes the rate between two reports.
type StatsReport struct {
	// At is the agent's clock when it read the counters, in Unix
	// milliseconds: the window between two reports is measured on one
	// clock, whatever the skew to the control plane's.
	At int64 `json:"at"`
	// Full: Rows holds every row the agent tracks (the first report of a
	// stream). Otherwise only the rows whose counters changed since the
	// previous report on the stream; the others keep their values.
	Full bool `json:"full,omitempty"`
	// Bounds are the upper bounds (seconds, ascending) of the latency
	// buckets of every row; set whenever Rows is.
	Bounds []float64 `json:"bounds,omitempty"`
	Rows   []StatRow `json:"rows,omitempty"`
	// Dropped is how many rows the agent does not track because it holds
	// MaxStatRows already, DroppedRequests their requests so far.
	Dropped         uint64 `json:"dropped,omitempty"`
	DroppedRequests uint64 `json:"droppedRequests,omitempty"`
}

// StatRow is one row of a StatsReport.
type StatRow struct {
	Service       string `json:"service"` // "namespace/name"
	Node          string `json:"node"`    // the endpoint's node
	Site          string `json:"site,omitempty"`
	SourceService string `json:"sourceService,omitempty"` // "namespace/account" or "unknown"
	Tier          string `json:"tier,omitempty"`          // node, site, region or any
	Path          string `json:"path,omitempty"`          // same_node … relayed
	// Codes counts requests by status class: no response, 1xx … 5xx.
	Codes [6]uint64 `json:"codes"`
	// Buckets counts requests by latency: Buckets[i] those above
	// Bounds[i-1] and at most Bounds[i], the last one those above every
	// bound (len(Bounds)+1 entries).
	Buckets []uint64 `json:"buckets,omitempty"`
}
