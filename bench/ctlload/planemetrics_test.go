package main

import (
	"testing"
	"time"
)

// The steady phase's quantiles come from the difference of two /metrics
// texts: buckets filled before the phase do not count.
func TestPlaneQuantiles(t *testing.T) {
	before := `fogmesh_control_push_seconds_bucket{vmrange="1.000e-03...1.136e-03"} 90
fogmesh_control_push_seconds_sum 0.1
fogmesh_control_push_seconds_count 90
fogmesh_control_admin_write_seconds_bucket{phase="total",vmrange="8.799e-03...1.000e-02"} 5
`
	after := `fogmesh_control_push_seconds_bucket{vmrange="1.000e-03...1.136e-03"} 100
fogmesh_control_push_seconds_bucket{vmrange="4.642e-03...5.275e-03"} 89
fogmesh_control_push_seconds_bucket{vmrange="1.468e-01...1.668e-01"} 1
fogmesh_control_push_seconds_sum 0.7
fogmesh_control_push_seconds_count 190
fogmesh_control_admin_write_seconds_bucket{phase="total",vmrange="8.799e-03...1.000e-02"} 55
fogmesh_control_admin_write_seconds_bucket{phase="store",vmrange="8.799e-03...1.000e-02"} 3
`
	got := planeQuantiles(before, after)
	push := got["fogmesh_control_push_seconds"]
	if push.N != 100 || push.P50 != 5275*time.Microsecond || push.P99 != 5275*time.Microsecond {
		t.Fatalf("push %+v", push)
	}
	if tot := got[`fogmesh_control_admin_write_seconds{phase="total"}`]; tot.N != 50 || tot.P99 != 10*time.Millisecond {
		t.Fatalf("total %+v", tot)
	}
	if st := got[`fogmesh_control_admin_write_seconds{phase="store"}`]; st.N != 3 {
		t.Fatalf("store %+v", st)
	}
	if _, ok := got[`fogmesh_control_admin_write_seconds{phase="audit"}`]; ok {
		t.Fatal("a histogram absent from both texts is reported")
	}
	// One more slow push: the p99 of 101 is the slow bucket.
	after2 := after + `fogmesh_control_push_seconds_bucket{vmrange="1.468e-01...1.668e-01"} 1
`
	if p := planeQuantiles(before, after2)["fogmesh_control_push_seconds"]; p.N != 101 || p.P99 != 166800*time.Microsecond {
		t.Fatalf("push with two slow: %+v", p)
	}
}
