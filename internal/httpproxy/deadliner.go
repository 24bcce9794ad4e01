package httpproxy

import (
	"net/http"
	"time"
)

// ReadDeadliner sets a read deadline (net.Conn, http.ResponseController).
type ReadDeadliner interface{ SetReadDeadline(time.Time) error }

// DeadlineFunc is a function as a ReadDeadliner.
type DeadlineFunc func(time.Time) error

func (f DeadlineFunc) SetReadDeadline(t time.Time) error { return f(t) }

// WriteDeadliner sets a write deadline (http.ResponseController).
type WriteDeadliner interface{ SetWriteDeadline(time.Time) error }

// ReadDeadlinerOf is what http.NewResponseController(w).SetReadDeadline
// reaches: w itself when it has the method (the servers' own writers), else
// the controller, which looks behind w's wrappers.
func ReadDeadlinerOf(w http.ResponseWriter) ReadDeadliner {
	if d, ok := w.(ReadDeadliner); ok {
		return d
	}
	return http.NewResponseController(w)
}

// WriteDeadlinerOf is ReadDeadlinerOf for write deadlines.
func WriteDeadlinerOf(w http.ResponseWriter) WriteDeadliner {
	if d, ok := w.(WriteDeadliner); ok {
		return d
	}
	return http.NewResponseController(w)
}
