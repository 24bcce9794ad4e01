package httpproxy

import (
	"context"
	"testing"
)

// TestHeaderBufWithMark: a HeaderBuf set with a stream-cancel mark
// (SetResponseHeaderBuf, the fast path's) is found through the mark, on
// the mark's context and on one derived from it (a request timeout's);
// one given with WithResponseHeaderBuf still is, mark or not; a context
// with neither has none.
func TestHeaderBufWithMark(t *testing.T) {
	var a, b HeaderBuf
	marked := WithStreamCancel(context.Background())
	SetResponseHeaderBuf(marked, &a)
	derived, cancel := context.WithCancel(marked)
	defer cancel()
	plain := WithResponseHeaderBuf(context.Background(), &b)
	under := WithStreamCancel(WithResponseHeaderBuf(context.Background(), &b)) // a mark without its own
	for _, c := range []struct {
		name string
		ctx  context.Context
		want *HeaderBuf
	}{
		{"marked", marked, &a},
		{"derived", derived, &a},
		{"plain", plain, &b},
		{"under a mark", under, &b},
		{"none", WithStreamCancel(context.Background()), nil},
	} {
		if got := headerBufOf(c.ctx); got != c.want {
			t.Errorf("%s: headerBufOf = %p, want %p", c.name, got, c.want)
		}
	}
	SetResponseHeaderBuf(context.Background(), &b) // no mark: nothing to set, no panic
}
