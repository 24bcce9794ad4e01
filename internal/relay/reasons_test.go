package relay

import (
	"bytes"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/VictoriaMetrics/metrics"

	"github.com/fogmesh/fogmesh/internal/identity"
)

// TestRefusalReasonLabels: relay servers created at once (under -race: no
// shared slice is appended to) each register fogmesh_relay_refused_total
// once per reason, every reason the relay counts, none twice.
func TestRefusalReasonLabels(t *testing.T) {
	want := slices.Concat(identity.Reasons, []string{
		ReasonFrameTooLarge, ReasonFrameTrunc, ReasonFrameType, ReasonFrameBad,
		ReasonBadRequest, ReasonUnexpected, ReasonReplay, ReasonOtherDomain, ReasonDenied, ReasonNotConnected,
		ReasonSessionLimit, ReasonAcceptTimeout, ReasonUnknownSession, ReasonSlowReader, ReasonRevokedLive,
		ReasonUDPShort, ReasonUDPBadToken, ReasonNonceStoreFull, ReasonNotNodeIdentity, ReasonWrongALPN,
		ReasonControlTimeout, ReasonIntroductionLimit,
		ReasonUDPChannelLimit, ReasonUDPUnavailable, ReasonUDPMalformed, ReasonUDPUnknownChannel,
		ReasonUDPBadTag, ReasonUDPReplay, ReasonUDPPeerUnbound, ReasonUDPRateLimit,
	})
	slices.Sort(want)
	if d := slices.Compact(slices.Clone(want)); len(d) != len(want) {
		t.Fatalf("the test's own list has duplicates: %v", want)
	}

	got := slices.Clone(refusalReasons)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("refusalReasons (sorted) = %v\nwant %v", got, want)
	}

	ca := newCA(t)
	src := source(t, ca, "relay", "r1")
	const servers = 8
	sets := make([]*metrics.Set, servers)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range sets {
		sets[i] = metrics.NewSet()
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			srv, err := New(Config{Source: src, Metrics: sets[i]})
			if err != nil {
				t.Error(err)
				return
			}
			srv.Close()
		}()
	}
	close(start)
	wg.Wait()
	for i, set := range sets {
		var b bytes.Buffer
		set.WritePrometheus(&b)
		var labels []string
		for _, line := range strings.Split(b.String(), "\n") {
			if rest, ok := strings.CutPrefix(line, `fogmesh_relay_refused_total{reason="`); ok {
				labels = append(labels, rest[:strings.IndexByte(rest, '"')])
			}
		}
		slices.Sort(labels)
		if !slices.Equal(labels, want) {
			t.Errorf("server %d: refused reasons %v\nwant %v", i, labels, want)
		}
	}
}
