package meshdns

import (
	"fmt"

	"github.com/VictoriaMetrics/metrics"
)

// result is how one query was answered; each has a counter.
type result int

const (
	resultAnswer      result = iota // answered from the zone with records
	resultNXDomain                  // name not in the zone
	resultNoData                    // name in the zone, no records of the type
	resultForward                   // relayed an upstream's answer
	resultServFail                  // forwarding failed or was impossible
	resultFormErr                   // malformed query (question count != 1, ...)
	resultNotImp                    // opcode other than QUERY
	resultRefused                   // class other than IN inside the zone
	resultRateLimited               // REFUSED: the client is over its forwarding rate
	numResults
)

var resultNames = [numResults]string{
	resultAnswer:      "answer",
	resultNXDomain:    "nxdomain",
	resultNoData:      "nodata",
	resultForward:     "forward",
	resultServFail:    "servfail",
	resultFormErr:     "formerr",
	resultNotImp:      "notimp",
	resultRefused:     "refused",
	resultRateLimited: "ratelimited",
}

func (r result) String() string {
	if r < 0 || r >= numResults {
		return fmt.Sprintf("result(%d)", int(r))
	}
	return resultNames[r]
}

// serverMetrics are the counters of one Server:
//
//	fogmesh_dns_queries_total{result="answer|nxdomain|nodata|forward|servfail|formerr|notimp|refused|ratelimited"}
//
//	fogmesh_dns_invalid_packets_total
//
//	fogmesh_dns_tcp_refused_total
//
// result="ratelimited" counts the queries to forward answered REFUSED
// because their client was over Config.ForwardRate; "refused" is only for
// classes other than IN inside the zone. The second counts packets that
// did not unpack as a DNS message; the server answers some with FORMERR
// and drops the rest. The third counts TCP connections closed unserved
// because maxTCPConns were open. Servers sharing a metrics.Set share the
// counters.
type serverMetrics struct {
	queries    [numResults]*metrics.Counter
	invalid    *metrics.Counter
	tcpRefused *metrics.Counter
}

func newServerMetrics(set *metrics.Set) *serverMetrics {
	m := new(serverMetrics)
	for r := range numResults {
		m.queries[r] = set.GetOrCreateCounter(fmt.Sprintf("fogmesh_dns_queries_total{result=%q}", r.String()))
	}
	m.invalid = set.GetOrCreateCounter("fogmesh_dns_invalid_packets_total")
	m.tcpRefused = set.GetOrCreateCounter("fogmesh_dns_tcp_refused_total")
	return m
}

func (m *serverMetrics) count(r result) {
	if r >= 0 && r < numResults {
		m.queries[r].Inc()
	}
}
