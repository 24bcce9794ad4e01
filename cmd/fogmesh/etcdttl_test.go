package main

import (
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestEtcdSessionTTLNegativeRefused: a negative etcdSessionTTL (file or
// flag) is a usage error naming the field whatever the store, as the
// control config's negative durations are. Before, it was refused only
// with -store etcd, and there without the field's name.
func TestEtcdSessionTTLNegativeRefused(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	for _, fc := range []controlFile{
		{EtcdSessionTTL: durationValue(-time.Second)},
		{Store: "bbolt", EtcdSessionTTL: durationValue(-time.Nanosecond)},
		{Store: "etcd", EtcdEndpoints: []string{"https://127.74.0.1:2379"}, EtcdSessionTTL: durationValue(-10 * time.Second)},
	} {
		if _, err := etcdOptions(&fc, log); err == nil || !strings.Contains(err.Error(), "etcdSessionTTL") {
			t.Errorf("store %q, etcdSessionTTL %v: %v, want refused naming the field", fc.Store, time.Duration(fc.EtcdSessionTTL), err)
		}
	}
	fc := controlFile{Store: "etcd", EtcdEndpoints: []string{"https://127.74.0.1:2379"}, EtcdSessionTTL: durationValue(10 * time.Second)}
	if o, err := etcdOptions(&fc, log); err != nil || o.LeaseTTL != 10 {
		t.Errorf("etcdSessionTTL 10s: %+v, %v", o, err)
	}
}
