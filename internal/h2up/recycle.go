package h2up

import (
	"net/http"
	"reflect"
	"sync"
)

// Response header and trailer maps given back by their caller (Recycle)
// and taken again by the read loop for the next responses (conn.header):
// a small map is two allocations (its header and its one group of eight
// slots, about 400 bytes), and a gRPC call's response has two of them
// (issue 14, session 32's memory profile).

// recycledKeys: maps of at most this many keys are pooled (one group);
// a larger one, which a map never shrinks from, is left to the collector.
const recycledKeys = 8

var headerPool sync.Pool

// Recycle gives back resp's header and trailer maps, for later responses
// of any connection. The caller has done with resp: nothing reads or
// writes the maps after the call (their value slices may be kept: a
// recycled map is cleared, its values are not touched), and resp's body
// has been closed. Maps of any origin may be given back (a response the
// caller made itself, too), each at most once.
func Recycle(resp *http.Response) {
	recycle(resp.Header)
	if resp.Trailer != nil && !sameMap(resp.Trailer, resp.Header) {
		recycle(resp.Trailer)
	}
	resp.Header, resp.Trailer = nil, nil
}

func recycle(h http.Header) {
	if h == nil || len(h) > recycledKeys {
		return
	}
	clear(h)
	headerPool.Put(h)
}

// sameMap reports whether a and b are one map.
func sameMap(a, b http.Header) bool {
	return reflect.ValueOf(a).UnsafePointer() == reflect.ValueOf(b).UnsafePointer()
}
