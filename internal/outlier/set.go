package outlier

import (
	"sync"
	"time"
)

// Set is an agent's outlier state: one Detector per service (the pool its
// endpoints form) and the quarantine of unreachable endpoints. Safe for
// concurrent use; the zero value is ready.
//
// The quarantine is fogmesh's own fast failover, apart from outlier
// detection: an endpoint that refused a connection is skipped for a fixed
// time (the agent's ejectFor), not subject to max ejection percent. The
// agent applies it only when the service's policy asks for it (fogmesh's
// default; Istio documents only count the failure).
type Set struct {
	mu        sync.RWMutex         // guards the following
	detectors map[string]*Detector // service key -> its pool's detector
	owner     map[string]*Detector // endpoint key -> its service's detector

	quarantine sync.Map // endpoint key -> time.Time until which it is skipped
}

// Detector returns service's detector with cfg, created (sweeps starting
// at now) if it does not exist.
func (s *Set) Detector(service string, cfg Config, now time.Time) *Detector {
	s.mu.RLock()
	d := s.detectors[service]
	s.mu.RUnlock()
	if d == nil {
		s.mu.Lock()
		if d = s.detectors[service]; d == nil {
			if s.detectors == nil {
				s.detectors, s.owner = map[string]*Detector{}, map[string]*Detector{}
			}
			d = New(cfg, now)
			s.detectors[service] = d
		}
		s.mu.Unlock()
	}
	d.SetConfig(cfg, now)
	return d
}

// Sync sets one service's configuration and pool (its endpoints' keys).
func (s *Set) Sync(service string, cfg Config, endpoints []string, now time.Time) {
	d := s.Detector(service, cfg, now)
	d.SetHosts(endpoints)
	s.mu.Lock()
	for _, k := range endpoints {
		s.owner[k] = d
	}
	s.mu.Unlock()
}

// Prune forgets the services not in keep, and their endpoints.
func (s *Set) Prune(keep map[string]bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	gone := map[*Detector]bool{}
	for svc, d := range s.detectors {
		if !keep[svc] {
			gone[d] = true
			delete(s.detectors, svc)
		}
	}
	for k, d := range s.owner {
		if gone[d] {
			delete(s.owner, k)
		}
	}
}

// Report records an outcome of an attempt at endpoint key of service.
func (s *Set) Report(service string, cfg Config, key string, o Outcome, now time.Time) Event {
	d := s.Detector(service, cfg, now)
	s.mu.RLock()
	known := s.owner[key] == d
	s.mu.RUnlock()
	if !known {
		s.mu.Lock()
		s.owner[key] = d
		s.mu.Unlock()
	}
	return d.Report(key, o, now)
}

// Quarantine skips endpoint key until the given time.
func (s *Set) Quarantine(key string, until time.Time) {
	s.quarantine.Store(key, until)
}

// Ejected reports whether endpoint key is skipped now: quarantined, or
// ejected by its service's detector.
func (s *Set) Ejected(key string, now time.Time) bool {
	if v, ok := s.quarantine.Load(key); ok {
		if now.Before(v.(time.Time)) {
			return true
		}
		s.quarantine.CompareAndDelete(key, v)
	}
	s.mu.RLock()
	d := s.owner[key]
	s.mu.RUnlock()
	return d != nil && d.Ejected(key, now)
}

// Uneject returns endpoint key at once (its active health check passed):
// it lifts the quarantine and the detector's ejection.
func (s *Set) Uneject(key string, now time.Time) {
	s.quarantine.Delete(key)
	s.mu.RLock()
	d := s.owner[key]
	s.mu.RUnlock()
	if d != nil {
		d.Uneject(key, now)
	}
}

// State returns endpoint key's detector state (zero if it has none).
func (s *Set) State(key string, now time.Time) HostState {
	s.mu.RLock()
	d := s.owner[key]
	s.mu.RUnlock()
	if d == nil {
		return HostState{}
	}
	return d.State(key, now)
}

// Reset forgets every quarantine and detector.
func (s *Set) Reset() {
	s.quarantine.Clear()
	s.mu.Lock()
	s.detectors, s.owner = nil, nil
	s.mu.Unlock()
}
