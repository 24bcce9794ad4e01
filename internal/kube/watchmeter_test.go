package kube

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
)

// TestWatchMeterScan: a 410 ERROR event is seen across read boundaries,
// other events are not, and a read error after the client closed the
// stream is no broken link.
func TestWatchMeterScan(t *testing.T) {
	var got []string
	m := &watchMeter{report: func(res, reason string, err error) { got = append(got, res+" "+reason) }}
	stream := `{"type":"ADDED","object":{"code":410}}` + "\n" +
		`{"type":"ERROR","object":{"kind":"Status","code":410}}` + "\n"
	b := &meteredBody{rc: io.NopCloser(strings.NewReader("")), ctx: context.Background(), res: "services", m: m}
	for i := 0; i < len(stream); i += 7 { // events split across reads
		b.scan([]byte(stream[i:min(i+7, len(stream))]))
	}
	if strings.Join(got, ",") != "services gone" {
		t.Fatalf("reports %v, want one gone", got)
	}
	got = nil
	b = &meteredBody{rc: errReader{}, ctx: context.Background(), res: "pods", m: m}
	b.Read(make([]byte, 10))
	b.Close()
	b.Read(make([]byte, 10))
	if strings.Join(got, ",") != "pods broken" {
		t.Fatalf("reports %v, want one broken (before Close)", got)
	}
	if resourceOf("/apis/networking.istio.io/v1/namespaces/x/virtualservices") != "virtualservices" {
		t.Fatal("resourceOf")
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("connection reset") }
func (errReader) Close() error             { return nil }
