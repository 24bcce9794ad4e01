package h2up

import (
	"fmt"
	"net/http"
	"reflect"
	"testing"
)

// TestRecycleOddMaps: a response whose header and trailer are one map (a
// caller's own) gives it back once, not twice (two later responses
// would share it); a map above the pooled size is left as it is; nil
// maps are taken without harm.
func TestRecycleOddMaps(t *testing.T) {
	for headerPool.Get() != nil { // empty the pool (this P's part, at least)
	}
	h := http.Header{"A": {"1"}}
	Recycle(&http.Response{Header: h, Trailer: h})
	seen := 0
	for range 8 {
		got, _ := headerPool.Get().(http.Header)
		if got == nil {
			break
		}
		if reflect.ValueOf(got).UnsafePointer() == reflect.ValueOf(h).UnsafePointer() {
			seen++
			if len(got) != 0 {
				t.Errorf("a recycled map still holds %v", got)
			}
		}
	}
	if seen > 1 {
		t.Errorf("one map given back as header and trailer came out of the pool %d times", seen)
	}
	big := http.Header{}
	for i := range recycledKeys + 1 {
		big[fmt.Sprint("K", i)] = []string{"v"}
	}
	Recycle(&http.Response{Header: big})
	if len(big) != recycledKeys+1 {
		t.Errorf("a map above the pooled size was cleared: %d keys left", len(big))
	}
	Recycle(&http.Response{})
}
