// Package outlier is passive outlier detection: it watches the outcome of
// every request and connection an agent sends to an endpoint and takes an
// endpoint that keeps failing out of load balancing for a while. It exists
// apart from the agent so that Istio's semantics (a DestinationRule's
// outlierDetection configures Envoy's) can be stated and tested step by
// step: it is pure (no I/O, no goroutines, no clock of its own: every call
// takes the current time), so tests drive it with a fake clock.
//
// The semantics are Envoy's, from its architecture overview ("Outlier
// detection", envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/outlier),
// its API reference (config.cluster.v3.OutlierDetection) and its detector
// (DetectorImpl in source/common/upstream/outlier_detection_impl.cc):
//
//   - Two independent counters per endpoint. consecutive_5xx counts 5xx
//     responses and, unless local-origin errors are split off, local-origin
//     failures mapped to 5xx (a failed connect or a reset counts as 503, a
//     timeout as 504). consecutive_gateway_failure counts only 502, 503,
//     504 and those mapped local-origin failures; any other 5xx resets it.
//     A response below 500 resets both. Each counter that reaches its
//     threshold asks for an ejection and starts again from zero.
//   - With split_external_local_origin_errors, local-origin failures go to
//     a third counter (consecutive_local_origin_failure) instead, and a
//     successful connect resets it.
//   - Ejection is inline, when a threshold is reached, unless the
//     ejected share would exceed max_ejection_percent; at least one
//     endpoint may always be ejected ("If no hosts have been ejected,
//     Envoy will eject the host immediately").
//   - An endpoint is ejected for base_ejection_time × its multiplier,
//     capped at max_ejection_time (default 300 s). The multiplier grows by
//     one per ejection and, every interval the endpoint is not ejected,
//     decreases by one: "When the host becomes healthy, the ejection time
//     multiplier decreases with time. The host's health is checked at
//     intervals equal to outlier_detection.interval. If the host is healthy
//     during that check, the ejection time multiplier is decremented."
//   - Un-ejection happens at those interval checks (a sweep every
//     interval), once the ejection time has passed; the counters restart
//     from zero.
//   - Istio's minHealthPercent (Envoy's healthy_panic_threshold): "Outlier
//     detection will be enabled as long as the associated load balancing
//     pool has at least minHealthPercent hosts in healthy mode. When the
//     percentage of healthy hosts in the load balancing pool drops below
//     this threshold, outlier detection will be disabled and the proxy will
//     load balance across all hosts in the pool."
//
// Differences: success-rate and
// failure-percentage detection are not implemented (Istio turns
// success-rate enforcement off anyway); healthy for minHealthPercent means
// not ejected (endpoints failing their health check are not in the pool's
// count of unhealthy ones).
package outlier

import (
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of the Config fields that are durations or percentages: Envoy's.
const (
	DefaultInterval           = 10 * time.Second
	DefaultBaseEjectionTime   = 30 * time.Second
	DefaultMaxEjectionTime    = 300 * time.Second
	DefaultMaxEjectionPercent = 10
)

// Config is one pool's outlier detection. A threshold of 0 turns that
// counter off; with every counter off, the detector never ejects. The
// zero value is off.
type Config struct {
	// Consecutive5xx: 5xx responses (and local-origin failures, unless
	// SplitLocalOrigin) in a row before an ejection (Envoy
	// consecutive_5xx, Istio consecutive5xxErrors).
	Consecutive5xx int
	// ConsecutiveGateway: 502, 503, 504 (and local-origin failures, unless
	// SplitLocalOrigin) in a row (Envoy consecutive_gateway_failure,
	// Istio consecutiveGatewayErrors).
	ConsecutiveGateway int
	// SplitLocalOrigin counts local-origin failures (connect failures,
	// resets, timeouts) apart, in ConsecutiveLocalOrigin, instead of as
	// 503/504 (Envoy split_external_local_origin_errors).
	SplitLocalOrigin bool
	// ConsecutiveLocalOrigin: local-origin failures in a row, with
	// SplitLocalOrigin (Envoy consecutive_local_origin_failure).
	ConsecutiveLocalOrigin int
	// Interval between sweeps: un-ejection checks and multiplier decay
	// (default 10s).
	Interval time.Duration
	// BaseEjectionTime is multiplied by the endpoint's multiplier (default
	// 30s).
	BaseEjectionTime time.Duration
	// MaxEjectionTime caps an ejection (default 300s, or
	// BaseEjectionTime if that is larger).
	MaxEjectionTime time.Duration
	// MaxEjectionPercent of the pool may be ejected at once (0: the
	// default 10; one endpoint may always be ejected).
	MaxEjectionPercent int
	// MinHealthPercent: below this share of endpoints not ejected, no
	// endpoint counts as ejected (0: off).
	MinHealthPercent int
}

// Enabled reports whether any counter can eject.
func (c Config) Enabled() bool {
	return c.Consecutive5xx > 0 || c.ConsecutiveGateway > 0 || c.SplitLocalOrigin && c.ConsecutiveLocalOrigin > 0
}

// withDefaults fills the zero durations and percentage.
func (c Config) withDefaults() Config {
	if c.Interval <= 0 {
		c.Interval = DefaultInterval
	}
	if c.BaseEjectionTime <= 0 {
		c.BaseEjectionTime = DefaultBaseEjectionTime
	}
	if c.MaxEjectionTime <= 0 {
		c.MaxEjectionTime = max(DefaultMaxEjectionTime, c.BaseEjectionTime)
	}
	if c.MaxEjectionPercent <= 0 {
		c.MaxEjectionPercent = DefaultMaxEjectionPercent
	}
	return c
}

// Local is a locally originated event: what the agent saw instead of a
// response from the endpoint.
type Local uint8

const (
	// NoLocal: the outcome is a response (Outcome.Status).
	NoLocal Local = iota
	// ConnectFailed: the connection was refused, unreachable or timed out
	// (Envoy LOCAL_ORIGIN_CONNECT_FAILED, counted as 503 unless split).
	ConnectFailed
	// Reset: the exchange broke after the connect (Envoy's router reports
	// a reset as a connect failure: 503 unless split).
	Reset
	// Timeout: the endpoint did not answer in time (Envoy
	// LOCAL_ORIGIN_TIMEOUT, counted as 504 unless split).
	Timeout
	// Connected: a connection for a request was established; only resets
	// the local-origin counter in split mode (Envoy
	// LOCAL_ORIGIN_CONNECT_SUCCESS).
	Connected
	// ConnectedFinal: a connection that is the whole outcome (TCP
	// proxying) was established: a success for every counter (Envoy
	// LOCAL_ORIGIN_CONNECT_SUCCESS_FINAL, counted as 200 unless split).
	ConnectedFinal
)

// Outcome is what one attempt at an endpoint came to: a response's status,
// or a local event.
type Outcome struct {
	Status int
	Local  Local
}

// Reason names the counter that asked for an ejection.
type Reason string

const (
	Consecutive5xx         Reason = "consecutive_5xx"
	ConsecutiveGateway     Reason = "consecutive_gateway_failure"
	ConsecutiveLocalOrigin Reason = "consecutive_local_origin_failure"
)

// Event is what a reported outcome did.
type Event struct {
	// Reason is set when a counter reached its threshold.
	Reason Reason
	// Ejected: the endpoint was ejected, for at least For (it returns at
	// the first sweep after that). Otherwise, with a Reason, the ejection
	// was skipped: the pool's max ejection percent was reached.
	Ejected bool
	For     time.Duration
}

// HostState is an endpoint's detector state, for status pages and tests.
type HostState struct {
	Ejected    bool // ejected now (even if MinHealthPercent ignores it)
	Multiplier int  // the ejection time multiplier
	// Consecutive counters.
	Consecutive5xx, ConsecutiveGateway, ConsecutiveLocalOrigin int
}

type host struct {
	c5xx, cGateway, cLocal int
	ejected                bool
	ejectedAt              time.Time
	backoff                int // the ejection time multiplier
}

// Detector is the outlier detection of one pool (a service's endpoints).
// It is safe for concurrent use.
type Detector struct {
	mu       sync.Mutex // guards the following
	cfg      Config     // with defaults
	start    time.Time  // sweep k runs at start + k·Interval
	swept    int64      // the last sweep run
	hosts    map[string]*host
	ejected  int // hosts ejected now
	counting int // hosts with a counter above zero

	// Mirrors of ejected and counting, read without mu by the request
	// path's checks: Report of a response below 500 changes nothing while
	// no counter is above zero, and ejectedNow finds nothing ejected while
	// none is (each a lock and a map lookup per request otherwise).
	nEjected, nCounting atomic.Int64

	slowOnly bool // tests: every Report takes the lock (the reference for the fast path)
}

// New returns a detector whose sweeps start at now.
func New(cfg Config, now time.Time) *Detector {
	return &Detector{cfg: cfg.withDefaults(), start: now, hosts: map[string]*host{}}
}

// Config returns the detector's configuration, defaults filled in.
func (d *Detector) Config() Config {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cfg
}

// SetConfig changes the configuration and keeps the endpoints' state
// (counters, ejections, multipliers), as Envoy keeps a cluster's detector
// across an update. Turning detection off returns every endpoint.
func (d *Detector) SetConfig(cfg Config, now time.Time) {
	cfg = cfg.withDefaults()
	d.mu.Lock()
	defer d.mu.Unlock()
	if cfg == d.cfg {
		return
	}
	d.sweepLocked(now)
	if cfg.Interval != d.cfg.Interval {
		d.start, d.swept = now, 0
	}
	d.cfg = cfg
	if !cfg.Enabled() {
		for _, h := range d.hosts {
			*h = host{}
		}
		d.ejected, d.counting = 0, 0
	}
	d.syncLocked()
}

// SetHosts makes keys the pool: new endpoints start clean, endpoints not
// in keys are forgotten.
func (d *Detector) SetHosts(keys []string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	keep := make(map[string]bool, len(keys))
	for _, k := range keys {
		keep[k] = true
		if d.hosts[k] == nil {
			d.hosts[k] = &host{}
		}
	}
	for k, h := range d.hosts {
		if !keep[k] {
			if h.ejected {
				d.ejected--
			}
			if h.counts() {
				d.counting--
			}
			delete(d.hosts, k)
		}
	}
	d.syncLocked()
}

// Report records one outcome of an attempt at endpoint key (added to the
// pool if it is not in it, unless the outcome is a response below 500)
// and returns what it did. A response below 500 while no endpoint has a
// counter above zero changes nothing: it takes no lock (most requests'
// outcome), and leaves the sweeps due to the next call that looks (they
// run in closed form: sweepLocked). (The agent's pools are SetHosts'
// from its view: a key not in one is an endpoint gone from it, whose
// late successes must not count in the pool's size.)
func (d *Detector) Report(key string, o Outcome, now time.Time) Event {
	if o.Local == NoLocal && o.Status < 500 && d.nCounting.Load() == 0 && !d.slowOnly {
		return Event{}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.cfg.Enabled() {
		return Event{}
	}
	d.sweepLocked(now)
	h := d.hosts[key]
	if h == nil {
		if o.Local == NoLocal && o.Status < 500 {
			return Event{} // would change nothing but the pool's size (as the unlocked path above)
		}
		h = &host{}
		d.hosts[key] = h
	}
	was := h.counts()
	e := d.reportLocked(h, o, now)
	if is := h.counts(); is != was {
		if is {
			d.counting++
		} else {
			d.counting--
		}
	}
	d.syncLocked()
	return e
}

// reportLocked is Report's work on h's counters.
func (d *Detector) reportLocked(h *host, o Outcome, now time.Time) Event {
	status := o.Status
	if o.Local != NoLocal {
		if d.cfg.SplitLocalOrigin {
			switch o.Local {
			case Connected, ConnectedFinal:
				h.cLocal = 0
				return Event{}
			}
			h.cLocal++
			if c := d.cfg.ConsecutiveLocalOrigin; c > 0 && h.cLocal >= c {
				h.cLocal = 0
				return d.ejectLocked(h, ConsecutiveLocalOrigin, now)
			}
			return Event{}
		}
		switch o.Local { // Envoy's resultToHttpCode
		case ConnectFailed, Reset:
			status = 503
		case Timeout:
			status = 504
		case ConnectedFinal:
			status = 200
		default: // Connected: the response will tell
			return Event{}
		}
	} else if d.cfg.SplitLocalOrigin {
		h.cLocal = 0 // a response: the connection worked
	}
	if status < 500 {
		h.c5xx, h.cGateway = 0, 0
		return Event{}
	}
	var reason Reason
	if status == 502 || status == 503 || status == 504 {
		h.cGateway++
		if c := d.cfg.ConsecutiveGateway; c > 0 && h.cGateway >= c {
			h.cGateway, reason = 0, ConsecutiveGateway
		}
	} else {
		h.cGateway = 0
	}
	h.c5xx++
	if c := d.cfg.Consecutive5xx; c > 0 && h.c5xx >= c {
		h.c5xx = 0
		if reason == "" {
			reason = Consecutive5xx
		}
	}
	if reason == "" {
		return Event{}
	}
	return d.ejectLocked(h, reason, now)
}

// ejectLocked ejects h unless it is out already or the pool's max
// ejection percent forbids it.
func (d *Detector) ejectLocked(h *host, reason Reason, now time.Time) Event {
	ev := Event{Reason: reason}
	if h.ejected {
		return ev
	}
	if d.ejected > 0 && (d.ejected+1)*100 > d.cfg.MaxEjectionPercent*len(d.hosts) {
		return ev
	}
	h.ejected, h.ejectedAt = true, now
	d.ejected++
	// Envoy lets the multiplier grow until the ejection time reaches the
	// cap, and one step beyond so that the decay starts from the cap.
	if time.Duration(h.backoff)*d.cfg.BaseEjectionTime < d.cfg.MaxEjectionTime+d.cfg.BaseEjectionTime {
		h.backoff++
	}
	ev.Ejected, ev.For = true, d.ejectionTime(h.backoff)
	return ev
}

func (d *Detector) ejectionTime(backoff int) time.Duration {
	return min(time.Duration(backoff)*d.cfg.BaseEjectionTime, d.cfg.MaxEjectionTime)
}

// Ejected reports whether endpoint key is out of load balancing now: it is
// ejected and the pool is not below MinHealthPercent.
func (d *Detector) Ejected(key string, now time.Time) bool {
	return d.ejectedNow(key, func() time.Time { return now })
}

// ejectedNow is Ejected reading the time from clock only if an endpoint
// is ejected.
func (d *Detector) ejectedNow(key string, clock func() time.Time) bool {
	if d.nEjected.Load() == 0 && !d.slowOnly {
		return false // as below, without the lock
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ejected == 0 {
		return false
	}
	d.sweepLocked(clock())
	h := d.hosts[key]
	if h == nil || !h.ejected {
		return false
	}
	n := len(d.hosts)
	return d.cfg.MinHealthPercent <= 0 || (n-d.ejected)*100 >= d.cfg.MinHealthPercent*n
}

// Uneject returns an endpoint at once and clears its counters: its active
// health check passed (Envoy's successful_active_health_check_uneject_host,
// on by default). The multiplier is kept.
func (d *Detector) Uneject(key string, now time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.sweepLocked(now)
	h := d.hosts[key]
	if h == nil {
		return
	}
	if h.ejected {
		d.ejected--
	}
	h.ejected = false
	d.clearLocked(h)
	d.syncLocked()
}

// State returns endpoint key's state (the zero state if it is unknown).
func (d *Detector) State(key string, now time.Time) HostState {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.sweepLocked(now)
	h := d.hosts[key]
	if h == nil {
		return HostState{}
	}
	return HostState{Ejected: h.ejected, Multiplier: h.backoff,
		Consecutive5xx: h.c5xx, ConsecutiveGateway: h.cGateway, ConsecutiveLocalOrigin: h.cLocal}
}

// sweepLocked runs the sweeps due by now. Each sweep returns an ejected
// endpoint whose ejection time has passed (Envoy: ejection time <= now −
// ejected at) and decrements the multiplier of one that is not ejected.
// The sweeps an endpoint missed are run in closed form, so a detector
// nobody asked for an hour costs no more than one asked every millisecond.
func (d *Detector) sweepLocked(now time.Time) {
	iv := d.cfg.Interval
	k := int64(now.Sub(d.start) / iv)
	if k <= d.swept {
		return
	}
	from := d.swept + 1
	d.swept = k
	for _, h := range d.hosts {
		f := from
		if h.ejected {
			// The first sweep at or after the end of the ejection.
			due := h.ejectedAt.Add(d.ejectionTime(h.backoff)).Sub(d.start)
			u := int64(0)
			if due > 0 {
				u = int64((due + iv - 1) / iv)
			}
			if u > k {
				continue
			}
			u = max(u, f)
			h.ejected = false
			d.clearLocked(h)
			d.ejected--
			f = u + 1
		}
		if n := k - f + 1; n > 0 {
			h.backoff = int(max(0, int64(h.backoff)-n))
		}
	}
	d.syncLocked()
}
