package control

import (
	"maps"
	"time"
)

// loadEvery is how old the shared sum of the agents' endpoint loads may
// be. Agents report every heartbeat interval (seconds), so a second adds
// little staleness, and the sum costs O(N) once per second instead of once
// per heartbeat.
const loadEvery = time.Second

// loadSum is the sum of the endpoint loads of every agent with a fresh
// heartbeat, with each agent's own share as it was summed, so one agent's
// "others" is the sum minus its share. Guarded by Server.mu.
type loadSum struct {
	at    time.Time
	all   map[string]float64
	own   map[string]map[string]float64 // node -> its epLoad as summed
	scans int                           // sums made (tests)
}

// others returns the load of every fresh agent but node.
func (ls *loadSum) others(live map[string]*liveNode, node string, now time.Time, nodeTimeout time.Duration) map[string]float64 {
	if ls.own == nil || now.Sub(ls.at) >= loadEvery || now.Before(ls.at) {
		ls.at, ls.all, ls.own = now, nil, map[string]map[string]float64{}
		ls.scans++
		fresh := now.Add(-nodeTimeout)
		for name, l := range live {
			if len(l.epLoad) == 0 || l.lastHeartbeat.Before(fresh) {
				continue
			}
			if ls.all == nil {
				ls.all = map[string]float64{}
			}
			for k, v := range l.epLoad {
				ls.all[k] += v
			}
			ls.own[name] = l.epLoad
		}
	}
	if len(ls.all) == 0 {
		return nil
	}
	own := ls.own[node]
	if len(own) == 0 {
		return maps.Clone(ls.all)
	}
	out := make(map[string]float64, len(ls.all))
	for k, v := range ls.all {
		if v -= own[k]; v > 1e-9 {
			out[k] = v
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}
