package memtrim

import (
	"fmt"
	"os"
	"runtime/metrics"
	"strconv"
	"strings"
)

// The GC's pace under load.
//
// With Go's default GOGC=100 a collection starts when the heap has grown
// by the live heap since the last one; a proxy's live heap is a few MB
// (4 MB is the runtime's least goal), so a busy agent collects every few
// thousand requests and pays for the mark, the sweep and the sweeper's
// wait on every one (BENCHMARKS.md, sessions 31 and 32: 2-3 µs of a
// gRPC call's ~32). A higher GOGC pays less, but keeps its larger heap
// after the load is over. The pace raises the percent only while the
// process counts as loaded (the Trimmer's ticks), so that the heap may
// grow Headroom bytes above the live heap between collections, and puts
// the start's percent back at the first idle tick: the trim that follows
// an idle second finds the heap goal of the default again. A live heap
// of Headroom or more is paced as before (the percent never drops below
// the start's), so the memory a load may add is bounded by Headroom.

// DefaultHeadroom is the headroom the agent gives the heap under load
// (FOGMESH_GC_HEADROOM unset).
const DefaultHeadroom = 16 << 20

// maxPercent caps the raised percent.
const maxPercent = 800

// minGoal is the runtime's least heap goal at 100 %: at percent g it is
// minGoal×g/100 (runtime.defaultHeapMinimum).
const minGoal = 4 << 20

// pace is the decision core: the percent a tick asks for.
type pace struct {
	base     int    // the percent at the start (GOGC, 100 by default)
	headroom uint64 // bytes the heap may grow above live under load
	cur      int    // the percent last set
}

// percent is the GC percent for a tick: base when idle or when the live
// heap is not known; under load, the most that keeps the runtime's heap
// goal within headroom above live, between base and maxPercent. At
// percent g the runtime's goal is live + (live+roots)×g/100 (roots: the
// goroutine stacks and globals its last collection scanned), and at
// least minGoal×g/100.
func (p *pace) percent(busy bool, live, roots uint64) int {
	if !busy || live == 0 || p.headroom == 0 {
		return p.base
	}
	h := min(p.headroom, 1<<40) // keeps the products below in range
	want := min(uint64(maxPercent), h*100/(live+roots), (live+h)*100/minGoal)
	return max(int(want), p.base)
}

// next returns the percent to set for this tick, or -1 to leave the
// current one: a change under an eighth of the current percent is not
// made (the live heap moves a little every tick), a return to base always
// is.
func (p *pace) next(busy bool, live, roots uint64) int {
	want := p.percent(busy, live, roots)
	d := want - p.cur
	if d == 0 || (want != p.base && d < p.cur/8 && -d < p.cur/8) {
		return -1
	}
	p.cur = want
	return want
}

// HeadroomFromEnv reads FOGMESH_GC_HEADROOM: unset, DefaultHeadroom; "off"
// or "0", no pacing; otherwise a size ("16MiB", "8MB", "4194304"). The GC
// is not paced either where the operator set GOGC or GOMEMLIMIT (theirs is
// the say) or where GOGC is off. It returns why not when the answer is 0.
func HeadroomFromEnv() (uint64, string) {
	if os.Getenv("GOGC") != "" || os.Getenv("GOMEMLIMIT") != "" {
		return 0, "GOGC or GOMEMLIMIT is set"
	}
	v := strings.TrimSpace(os.Getenv("FOGMESH_GC_HEADROOM"))
	switch v {
	case "":
		return DefaultHeadroom, ""
	case "off", "0":
		return 0, "FOGMESH_GC_HEADROOM=" + v
	}
	n, err := parseSize(v)
	if err != nil {
		return 0, fmt.Sprintf("FOGMESH_GC_HEADROOM=%q: %v", v, err)
	}
	if n == 0 {
		return 0, "FOGMESH_GC_HEADROOM=" + v
	}
	return n, ""
}

// parseSize reads a byte count with an optional unit: B, KB, MB, GB
// (powers of 1000) or KiB, MiB, GiB (powers of 1024), in any case.
func parseSize(s string) (uint64, error) {
	units := []struct {
		suffix string
		mul    uint64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}}
	mul := uint64(1)
	for _, u := range units {
		if n := len(s) - len(u.suffix); n >= 0 && strings.EqualFold(s[n:], u.suffix) {
			s, mul = strings.TrimSpace(s[:n]), u.mul
			break
		}
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("not a size (a whole number with B, KB, MB, GB, KiB, MiB or GiB)")
	}
	if n > (1<<40)/mul {
		return 0, fmt.Errorf("over 1 TiB")
	}
	return n * mul, nil
}

// GCPercent reads the runtime's current GC percent (GOGC; -1 where GOGC
// is off, 0 where the runtime does not say).
func GCPercent() int {
	ms := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(ms)
	if ms[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return int(ms[0].Value.Uint64())
}

// newPace returns the pace for a Trimmer whose Config asks for one, at
// the runtime's current percent; nil where none is wanted or GOGC is off.
func newPace(headroom uint64) *pace {
	base := GCPercent()
	if headroom == 0 || base <= 0 {
		return nil
	}
	return &pace{base: base, headroom: headroom, cur: base}
}
