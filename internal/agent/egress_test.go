package agent

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/mask"
)

// recorder is an HTTP backend that keeps the last request it got.
type recorder struct {
	mu      sync.Mutex
	body    []byte
	header  http.Header
	length  int64
	readErr error
	n       int
}

func startRecorder(t *testing.T) (*recorder, int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		rec.mu.Lock()
		rec.body, rec.header, rec.length, rec.readErr = b, r.Header.Clone(), r.ContentLength, err
		rec.n++
		rec.mu.Unlock()
		io.WriteString(w, "ok")
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return rec, ln.Addr().(*net.TCPAddr).Port
}

func (r *recorder) last() ([]byte, http.Header, int64, error, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.body, r.header, r.length, r.readErr, r.n
}

func egressSvcDoc(name string, port int) string {
	return fmt.Sprintf(`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":%q,"namespace":"demo"},
	"spec":{"ports":[{"name":"web","port":%d,"protocol":"http"}],"retries":{"attempts":-1},
	"egress":[{"name":"cloud-pii","when":{"leavingSite":true},"mask":{"detectors":["cn-id","cn-mobile","bank-card"],
	"jsonPaths":[{"path":"$.customer.name"},{"path":"$.customer.birthday","action":"drop"}],
	"headers":[{"name":"x-user-phone"}],"keepFirst":3,"keepLast":4}}]}}`, name, port)
}

// testCard returns a Luhn-valid 19-digit card number starting 622202.
func testCard() string {
	b := []byte("622202123456789012")
	for c := byte('0'); c <= '9'; c++ {
		sum := 0
		d := append(append([]byte{}, b...), c)
		for i := len(d) - 1; i >= 0; i-- {
			v := int(d[i] - '0')
			if (len(d)-1-i)%2 == 1 {
				if v *= 2; v > 9 {
					v -= 9
				}
			}
			sum += v
		}
		if sum%10 == 0 {
			return string(d)
		}
	}
	panic("unreachable")
}

// TestEgressMaskingLeavingSite: the same request with personal data, sent
// through the client's agent (site s1), arrives masked at a real backend
// whose only endpoint is at another site (s9), and unchanged at one at
// the client's own site. Malformed and compressed JSON bound for the
// other site get an error and never arrive whole.
func TestEgressMaskingLeavingSite(t *testing.T) {
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, egressSvcDoc("pii-far", 19130))
	apply(t, cp, egressSvcDoc("pii-near", 19131))
	far, farPort := startRecorder(t)
	near, nearPort := startRecorder(t)
	ctl := []string{cp.SyncAddr()}
	startAgent(t, agentOpts{name: "a", site: "s1", region: "r1", vipOctet: 230, control: ctl, stateDir: t.TempDir(),
		workloads: []Workload{webWorkload("pii-near", "pii-near-1", nearPort)}})
	startAgent(t, agentOpts{name: "b", site: "s9", region: "r1", vipOctet: 231, control: ctl, stateDir: t.TempDir(),
		workloads: []Workload{webWorkload("pii-far", "pii-far-1", farPort)}})
	client := startAgent(t, agentOpts{name: "c", site: "s1", region: "r1", vipOctet: 232, control: ctl, stateDir: t.TempDir()})
	waitFor(t, "client to learn both endpoints", func() bool {
		return len(endpointsOf(client, "demo/pii-far")) == 1 && len(endpointsOf(client, "demo/pii-near")) == 1
	})
	vip := map[string]string{}
	for _, r := range client.Routes() {
		vip[r.Service] = r.VIP
	}
	farURL, nearURL := "http://"+vip["demo/pii-far"]+":19130/orders", "http://"+vip["demo/pii-near"]+":19131/orders"

	id17 := "11010519491231002"
	id := id17 + string(mask.IDCheckChar([]byte(id17)))
	card := testCard()
	body := `{"customer":{"name":"张三丰","idNumber":"` + id + `","phone":"13812345678","birthday":"1949-12-31"},` +
		`"items":[{"sku":"A-1","card":` + card + `},{"sku":"B-2","card":"` + card[:4] + " " + card[4:8] + " " + card[8:12] + " " + card[12:16] + " " + card[16:] + `"}],` +
		`"note":"call +86 139-1234-5678 after 6pm","invalidId":"` + id17 + `0"}`
	post := func(url, body string, h map[string]string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest("POST", url, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-User-Phone", "13812345678")
		for k, v := range h {
			req.Header.Set(k, v)
		}
		c := &http.Client{Timeout: 5 * time.Second}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	waitFor(t, "listeners", func() bool {
		_, e1 := http.Get(farURL)
		_, e2 := http.Get(nearURL)
		return e1 == nil && e2 == nil
	})

	// Same site: unchanged, byte for byte, Content-Length kept.
	if code, resp := post(nearURL, body, nil); code != 200 {
		t.Fatalf("near: %d %s", code, resp)
	}
	got, h, length, err, _ := near.last()
	if err != nil || string(got) != body || h.Get("X-User-Phone") != "13812345678" || length != int64(len(body)) {
		t.Fatalf("near got %s (len %d, err %v), header %v", got, length, err, h.Get("X-User-Phone"))
	}

	// Another site: masked, chunked.
	if code, resp := post(farURL, body, nil); code != 200 {
		t.Fatalf("far: %d %s", code, resp)
	}
	got, h, length, err, _ = far.last()
	if err != nil || !json.Valid(got) || length != -1 {
		t.Fatalf("far got %s (len %d, err %v)", got, length, err)
	}
	want := `{"customer":{"name":"张**","idNumber":"` + masked(id) + `","phone":"138****5678"},` +
		`"items":[{"sku":"A-1","card":"` + masked(card) + `"},{"sku":"B-2","card":"` + masked(card[:4]+" "+card[4:8]+" "+card[8:12]+" "+card[12:16]+" "+card[16:]) + `"}],` +
		`"note":"call +86 139******5678 after 6pm","invalidId":"` + id17 + `0"}`
	if string(got) != want {
		t.Fatalf("far got\n%s\nwant\n%s", got, want)
	}
	if p := h.Get("X-User-Phone"); p != "138****5678" {
		t.Fatalf("far header X-User-Phone %q", p)
	}

	// Malformed JSON: an error for the client, nothing whole for the backend.
	_, _, _, _, before := far.last()
	code, resp := post(farURL, `{"customer":{"phone":"13812345678"},"x":`+strings.Repeat(" ", 100)+`oops}`, nil)
	if code != http.StatusBadGateway || !strings.Contains(resp, "malformed JSON") {
		t.Fatalf("malformed: %d %s", code, resp)
	}
	if got, _, _, err, n := far.last(); n != before && err == nil {
		t.Fatalf("backend got a complete malformed request: %s", got)
	}
	// Compressed JSON is refused before anything is sent.
	code, resp = post(farURL, "\x1f\x8b...", map[string]string{"Content-Encoding": "gzip"})
	if code != http.StatusBadGateway || !strings.Contains(resp, "compressed body") {
		t.Fatalf("compressed: %d %s", code, resp)
	}
	// Not JSON: passes unchanged (headers still masked).
	if code, _ := post(farURL, "phone 13812345678", map[string]string{"Content-Type": "text/plain"}); code != 200 {
		t.Fatalf("text: %d", code)
	}
	if got, h, _, _, _ := far.last(); string(got) != "phone 13812345678" || h.Get("X-User-Phone") != "138****5678" {
		t.Fatalf("text body %q, header %q", got, h.Get("X-User-Phone"))
	}

	var m bytes.Buffer
	client.cfg.Metrics.WritePrometheus(&m)
	for _, s := range []string{
		`fogmesh_egress_masked_fields_total{service="demo/pii-far",detector="cn-id"} 1`,
		`fogmesh_egress_masked_fields_total{service="demo/pii-far",detector="bank-card"} 2`,
		`fogmesh_egress_masked_fields_total{service="demo/pii-far",detector="json-path"} 1`,
		`fogmesh_egress_bodies_total{service="demo/pii-far",rule="cloud-pii",result="masked"} 1`,
		`fogmesh_egress_bodies_total{service="demo/pii-far",rule="cloud-pii",result="failed"} 1`,
		`fogmesh_egress_bodies_total{service="demo/pii-far",rule="cloud-pii",result="rejected"} 1`,
	} {
		if !strings.Contains(m.String(), s) {
			t.Errorf("metrics lack %s", s)
		}
	}
	if strings.Contains(m.String(), `fogmesh_egress_masked_fields_total{service="demo/pii-near"`) {
		t.Errorf("same-site requests were masked:\n%s", m.String())
	}
}

// masked is s masked with keepFirst 3, keepLast 4 (ASCII s).
func masked(s string) string { return s[:3] + strings.Repeat("*", len(s)-7) + s[len(s)-4:] }

func TestEgressRuleSelects(t *testing.T) {
	near := &endpointView{tier: TierSite, site: "s1", region: "r1"}
	otherSite := &endpointView{tier: TierRegion, site: "s2", region: "r1"}
	cloud := &endpointView{tier: TierAny, site: "dc-1", region: "cloud"}
	static := &endpointView{tier: TierAny}
	local := &endpointView{tier: TierNode, local: true}
	for _, c := range []struct {
		when api.EgressWhen
		want string // which of near, otherSite, cloud, static, local it selects
	}{
		{api.EgressWhen{LeavingSite: true}, "otherSite cloud static"},
		{api.EgressWhen{LeavingRegion: true}, "cloud static"},
		{api.EgressWhen{ToRegions: []string{"cloud"}}, "cloud"},
		{api.EgressWhen{ToSites: []string{"s1", "s2"}}, "near otherSite"},
	} {
		r := egressRule{when: c.when}
		var got []string
		for _, e := range []struct {
			name string
			ev   *endpointView
		}{{"near", near}, {"otherSite", otherSite}, {"cloud", cloud}, {"static", static}, {"local", local}} {
			if r.selects(e.ev) {
				got = append(got, e.name)
			}
		}
		if strings.Join(got, " ") != c.want {
			t.Errorf("%+v selects %v, want %s", c.when, got, c.want)
		}
	}
}
