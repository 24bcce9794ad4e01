package control

import "github.com/fogmesh/fogmesh/internal/api"

// Server.live holds what is known of a node between store writes; an
// entry goes with its node: when the node is deleted and no sync stream
// of it is open, or when its last stream ends and the node is gone. (Kept
// otherwise, every node ever deleted stayed in memory and in each sum
// over live, for good.)

// deleteObj is the registry's, then drops a deleted node's live entry.
func (s *Server) deleteObj(kind, ns, name string) (uint64, error) {
	rev, err := s.reg.deleteObj(kind, ns, name)
	if err == nil && kind == api.KindNode {
		s.forgetLive(name)
	}
	return rev, err
}

// forgetLive drops node's live entry unless a stream of it is open (that
// stream's end checks again, liveEnded).
func (s *Server) forgetLive(node string) {
	s.mu.Lock()
	if l := s.live[node]; l != nil && l.conns == 0 {
		delete(s.live, node)
	}
	s.mu.Unlock()
}

// liveEnded runs when node's last stream ended: its entry goes if the
// node no longer exists (deleted while connected, or on another replica).
// A store error keeps it: the next deletion or stream end tries again.
func (s *Server) liveEnded(node string) {
	if _, ok, err := s.st.Get(api.KindNode + "/" + node); err != nil || ok {
		return
	}
	s.forgetLive(node)
}

// pruneLive drops the entries, with no stream open, of nodes not in nodes
// (the store's, just listed) once the store confirms they are gone: a
// node deleted on another replica after its stream here ended.
func (s *Server) pruneLive(nodes []api.Object) {
	have := make(map[string]bool, len(nodes))
	for _, o := range nodes {
		have[o.GetMeta().Name] = true
	}
	var gone []string
	s.mu.Lock()
	for name, l := range s.live {
		if l.conns == 0 && !have[name] {
			gone = append(gone, name)
		}
	}
	s.mu.Unlock()
	for _, name := range gone {
		s.liveEnded(name)
	}
}
