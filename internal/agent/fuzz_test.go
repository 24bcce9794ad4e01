package agent

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// FuzzDecodeWorkload: the local API's registration body never crashes the
// agent, and what it accepts normalizes to a valid endpoint or a clear error.
func FuzzDecodeWorkload(f *testing.F) {
	f.Add([]byte(`{"service":"orders","namespace":"shop","ports":[{"name":"http","port":8080}],"check":{"type":"http","path":"/healthz","timeout":"1s"}}`))
	f.Add([]byte(`{"service":"x","address":"::1","ports":[{"port":1}]}`))
	f.Add([]byte(`{"service":"x","ports":[{"port":70000}]}`))
	f.Add([]byte(`{"check":{"timeout":"-5s"}}`))
	f.Add([]byte(`{} {}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		w, err := DecodeWorkload(bytes.NewReader(b))
		if err != nil {
			return
		}
		if err := w.normalize("node-1"); err != nil {
			return
		}
		e := w.endpoint("node-1", true)
		if err := e.Validate(); err != nil {
			t.Fatalf("normalized workload gives invalid endpoint: %v", err)
		}
		if _, err := e.AddrPort(w.Check.Port); err != nil {
			t.Fatalf("check port: %v", err)
		}
	})
}

// FuzzLoadCache: a damaged cache file is an error, never a crash.
func FuzzLoadCache(f *testing.F) {
	f.Add([]byte(`{"storeId":"ab","version":3,"resources":[{"type":"Service","name":"demo/hello","version":2,"body":{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"hello","namespace":"demo"},"spec":{"ports":[{"name":"http","port":8080}]}}}]}`))
	f.Add([]byte(`{"resources":[{"type":"Node","name":"x","body":{}}]}`))
	f.Add([]byte(`{"resources":[{"type":"Service","name":"a/b","body":null}]}`))
	f.Add([]byte(`{`))
	f.Add([]byte{})
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, b []byte) {
		p := filepath.Join(dir, "cache.json")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		_, res, err := loadCache(p)
		if err != nil {
			return
		}
		// Whatever loads must build a view without panicking.
		self := &testNode
		buildView(self, res, nil, testPrefix4, testPrefix6, "fogmesh.local")
	})
}
