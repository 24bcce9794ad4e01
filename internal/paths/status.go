package paths

import (
	"sort"
	"time"

	"github.com/fogmesh/fogmesh/internal/relay"
)

// PathStatus is one peer's path, for `fogmesh get paths`.
type PathStatus struct {
	Peer   string `json:"peer"`
	Kind   Kind   `json:"kind"`
	Relay  string `json:"relay,omitempty"`
	Remote string `json:"remote,omitempty"`
	// Carrier is what the mesh runs on: tcp (TLS and yamux) or quic
	// (punched, or relayed over UDP).
	Carrier  string    `json:"carrier,omitempty"`
	RTTMs    float64   `json:"rttMs,omitempty"`
	BytesOut uint64    `json:"bytesOut"`
	BytesIn  uint64    `json:"bytesIn"`
	Since    time.Time `json:"since"`
	LastErr  string    `json:"lastError,omitempty"`
}

// Status is the manager's view: every peer's path, the relays, and
// whether punching runs.
type Status struct {
	Paths      []PathStatus        `json:"paths"`
	Relays     []relay.RelayStatus `json:"relays,omitempty"`
	Punching   bool                `json:"punching"`
	PunchNote  string              `json:"punchNote,omitempty"`
	Candidates []string            `json:"candidates,omitempty"`
}

// PathKind is the kind of path new streams to the named peer take now,
// "" if none was opened yet.
func (m *Manager) PathKind(name string) Kind {
	m.mu.Lock()
	defer m.mu.Unlock()
	if st := m.peers[name]; st != nil {
		return st.current()
	}
	return ""
}

// Status reports every peer's path.
func (m *Manager) Status() Status {
	m.mu.Lock()
	var s Status
	s.Punching, s.PunchNote, s.Candidates = m.punch.ready, m.punch.reason, m.punch.cands
	type row struct {
		PathStatus
		udp string
		ru  *udpRelayed
	}
	var rows []row
	for name, st := range m.peers {
		kind := st.current()
		if kind == "" {
			continue
		}
		r := row{PathStatus: PathStatus{Peer: name, Kind: kind, Relay: st.relay, Since: st.since, LastErr: st.lastErr,
			BytesOut: st.bytes.out.Load(), BytesIn: st.bytes.in.Load()}}
		r.Carrier = "tcp"
		switch {
		case kind == Punched:
			r.Kind, r.Relay, r.Remote, r.udp, r.Carrier = Punched, "", st.punched.MeshAddr(), st.punched.MeshAddr(), "quic"
		case st.kind == Direct:
			r.Remote = st.Addr
		case st.kind == Relayed && st.relUDP != nil:
			r.Relay, r.Remote, r.ru, r.Carrier = st.relUDP.relay, st.relUDP.addr(), st.relUDP, "quic"
		case st.kind == Relayed:
			r.Remote = st.relay
		}
		rows = append(rows, r)
	}
	u := m.udp
	m.mu.Unlock()
	for _, r := range rows {
		if rtt, ok := m.RTT(r.Peer); ok {
			r.RTTMs = float64(rtt) / float64(time.Millisecond)
		}
		if r.udp != "" && u != nil {
			out, in := u.client.Bytes(r.udp)
			r.BytesOut += out
			r.BytesIn += in
		}
		if r.ru != nil {
			out, in := r.ru.client.Bytes(r.ru.addr())
			r.BytesOut += out
			r.BytesIn += in
		}
		s.Paths = append(s.Paths, r.PathStatus)
	}
	sort.Slice(s.Paths, func(i, j int) bool { return s.Paths[i].Peer < s.Paths[j].Peer })
	if m.pool != nil {
		s.Relays = m.pool.Status()
	}
	return s
}
