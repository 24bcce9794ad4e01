package relay

import "fmt"

// pair is a dialing node and the node it dials, by SPIFFE ID.
type pair struct{ from, to string }

// pairRefusalLocked reports whether x may not dial one more session to y
// (MaxSessionsPerPair); if so it counts the refusal (the caller still
// answers with session_limit) and returns its Error. The pair is
// directed: y's own sessions to x are y's choice and count apart.
func (s *Server) pairRefusalLocked(x, y *node) *Error {
	if s.pairs[pair{x.id.String(), y.id.String()}] < s.cfg.MaxSessionsPerPair {
		return nil
	}
	s.mPairLimit.Inc()
	return &Error{Reason: ReasonSessionLimit, Message: fmt.Sprintf(
		"too many relayed sessions from this node to %s (at most %d per pair)", y.id, s.cfg.MaxSessionsPerPair)}
}

// pairAddLocked adds d (1 or -1) to the sessions x dialed to y; a pair
// with none is forgotten.
func (s *Server) pairAddLocked(x, y *node, d int) {
	k := pair{x.id.String(), y.id.String()}
	if n := s.pairs[k] + d; n > 0 {
		s.pairs[k] = n
	} else {
		delete(s.pairs, k)
	}
}
