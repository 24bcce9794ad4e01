package agent

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestEgressMaskingMirror: a copy that a route mirrors to an endpoint at
// another site leaves the site like any request, so the service's egress
// rule masks it; the primary request to the client's own site is
// unchanged.
func TestEgressMaskingMirror(t *testing.T) {
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, egressSvcDoc("pii-mir", 19132))
	apply(t, cp, `apiVersion: fogmesh.io/v1alpha1
kind: DestinationPolicy
metadata: {name: pii-mir, namespace: demo}
spec:
  service: pii-mir
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: fogmesh.io/v1alpha1
kind: Route
metadata: {name: pii-mir, namespace: demo}
spec:
  service: pii-mir
  rules:
  - backends: [{subset: v1}]
    mirror: {subset: v2}
`)
	near, nearPort := startRecorder(t)
	far, farPort := startRecorder(t)
	w1, w2 := webWorkload("pii-mir", "pii-mir-v1", nearPort), webWorkload("pii-mir", "pii-mir-v2", farPort)
	w1.Labels, w2.Labels = map[string]string{"version": "v1"}, map[string]string{"version": "v2"}
	ctl := []string{cp.SyncAddr()}
	startAgent(t, agentOpts{name: "ma", site: "s1", region: "r1", vipOctet: 233, control: ctl, stateDir: t.TempDir(),
		workloads: []Workload{w1}})
	startAgent(t, agentOpts{name: "mb", site: "s9", region: "r1", vipOctet: 234, control: ctl, stateDir: t.TempDir(),
		workloads: []Workload{w2}})
	client := startAgent(t, agentOpts{name: "mc", site: "s1", region: "r1", vipOctet: 235, control: ctl, stateDir: t.TempDir()})
	waitFor(t, "client to learn both endpoints", func() bool { return len(endpointsOf(client, "demo/pii-mir")) == 2 })
	var vip string
	for _, r := range client.Routes() {
		if r.Service == "demo/pii-mir" {
			vip = r.VIP
		}
	}
	url := "http://" + vip + ":19132/orders"
	c := &http.Client{Timeout: 5 * time.Second}
	waitFor(t, "listener", func() bool {
		resp, err := c.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return true
	})
	// The listener probes are mirrored too (GETs, no body): wait for their
	// copies to land, or one arriving after the POST's copy would be the
	// last the recorder saw.
	waitFor(t, "the probes' copies to land", func() bool { return client.l7.mirrors.Load() == 0 })
	_, _, _, _, base := far.last()
	body := `{"customer":{"phone":"13812345678"},"note":"call 13912345678"}`
	req, _ := http.NewRequest("POST", url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-User-Phone", "13812345678")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if got, h, _, _, _ := near.last(); string(got) != body || h.Get("X-User-Phone") != "13812345678" {
		t.Fatalf("same-site primary got %q, header %q; want it unchanged", got, h.Get("X-User-Phone"))
	}
	waitFor(t, "the mirrored copy", func() bool { b, _, _, _, n := far.last(); return n > base && len(b) > 0 })
	got, h, _, _, _ := far.last()
	if strings.Contains(string(got), "13812345678") || strings.Contains(string(got), "13912345678") || h.Get("X-User-Phone") != "138****5678" {
		t.Fatalf("mirror to another site got %s, header X-User-Phone %q: personal data left the site unmasked", got, h.Get("X-User-Phone"))
	}
}
