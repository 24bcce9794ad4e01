package httpproxy

// retired reports whether the connection says its path was left for a
// better one (a mesh stream of a session the agent retired after a punch
// succeeded: transport's streamConn.Retired). It is not reused, so that
// requests move to the new path and the old session drains and closes.
func (pc *poolConn) retired() bool {
	r, ok := pc.c.(interface{ Retired() bool })
	return ok && r.Retired()
}
