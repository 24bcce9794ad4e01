package agent

import (
	"bytes"
	"compress/gzip"
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
	"github.com/fogmesh/fogmesh/internal/egress"
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

// TestEgressRuleSelects: endpoint views placed by egressDest are selected
// as the rules say.
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
		r := egress.Rule{When: c.when}
		var got []string
		for _, e := range []struct {
			name string
			ev   *endpointView
		}{{"near", near}, {"otherSite", otherSite}, {"cloud", cloud}, {"static", static}, {"local", local}} {
			if r.Selects(egressDest(e.ev)) {
				got = append(got, e.name)
			}
		}
		if strings.Join(got, " ") != c.want {
			t.Errorf("%+v selects %v, want %s", c.when, got, c.want)
		}
	}
}

// TestEgressMaskingBypasses (issue 9, finding 7): requests that left a
// site with personal data unmasked because of how they spelled it, sent
// through a real client agent to a backend at another site. Each now
// arrives masked, or is refused and never reaches the backend.
func TestEgressMaskingBypasses(t *testing.T) {
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, egressSvcDoc("pii-bypass", 19133))
	// The same rule with onCompressed: decode.
	apply(t, cp, strings.Replace(egressSvcDoc("pii-gzip", 19134), `"keepLast":4`, `"keepLast":4,"onCompressed":"decode"`, 1))
	far, farPort := startRecorder(t)
	farGz, farGzPort := startRecorder(t)
	ctl := []string{cp.SyncAddr()}
	startAgent(t, agentOpts{name: "b", site: "s9", region: "r1", vipOctet: 244, control: ctl, stateDir: t.TempDir(),
		workloads: []Workload{webWorkload("pii-bypass", "pii-bypass-1", farPort), webWorkload("pii-gzip", "pii-gzip-1", farGzPort)}})
	client := startAgent(t, agentOpts{name: "c", site: "s1", region: "r1", vipOctet: 245, control: ctl, stateDir: t.TempDir()})
	waitFor(t, "client to learn the endpoints", func() bool {
		return len(endpointsOf(client, "demo/pii-bypass")) == 1 && len(endpointsOf(client, "demo/pii-gzip")) == 1
	})
	var url, gzURL string
	for _, r := range client.Routes() {
		switch r.Service {
		case "demo/pii-bypass":
			url = "http://" + r.VIP + ":19133/orders"
		case "demo/pii-gzip":
			gzURL = "http://" + r.VIP + ":19134/orders"
		}
	}
	waitFor(t, "listeners", func() bool {
		for _, u := range []string{url, gzURL} {
			resp, err := http.Get(u)
			if err != nil {
				return false
			}
			resp.Body.Close()
		}
		return true
	})
	postTo := func(url, body string, h http.Header) (int, string) {
		t.Helper()
		req, _ := http.NewRequest("POST", url, strings.NewReader(body))
		for k, v := range h {
			req.Header[k] = v
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
	post := func(body string, h http.Header) (int, string) { t.Helper(); return postTo(url, body, h) }
	jsonType := http.Header{"Content-Type": {"application/json"}}
	const bom = "\xef\xbb\xbf"
	for _, c := range []struct {
		name   string
		h      http.Header
		body   string
		want   string // what the backend gets
		refuse string // or: refused, the client's 502 says this
	}{
		{"exponent numbers (issue)", jsonType,
			`{"phone":1.3812345678e10,"card":4.111111111111111E15}`, `{"phone":"138****5678","card":"411*********1111"}`, ""},
		{"other number spellings", jsonType,
			`[13812345678.0,1.3812345678E+10,-1.3812345678e10,138123456780e-1]`, `["138****5678","138****5678","-138****5678","138****5678"]`, ""},
		{"invalid parameter (issue)", http.Header{"Content-Type": {"application/json; charset"}},
			`{"phone":"13812345678"}`, `{"phone":"138****5678"}`, ""},
		{"two Content-Type fields (issue)", http.Header{"Content-Type": {"text/plain", "application/json"}},
			`{"phone":"13812345678"}`, "", "ambiguous or unsupported Content-Type"},
		{"a comma list", http.Header{"Content-Type": {"text/plain, application/json"}},
			`{"phone":"13812345678"}`, "", "ambiguous or unsupported Content-Type"},
		{"no Content-Type", http.Header{},
			` {"phone":1.3812345678e10}`, ` {"phone":"138****5678"}`, ""},
		{"another name for JSON", http.Header{"Content-Type": {"text/json"}},
			`{"phone":"13812345678"}`, `{"phone":"138****5678"}`, ""},
		{"+json", http.Header{"Content-Type": {"application/problem+json"}},
			`{"phone":"\u0031\u0033\u0038\u0031\u0032\u0033\u0034\u0035\u0036\u0037\u0038"}`, `{"phone":"138****5678"}`, ""},
		{"byte order mark", jsonType,
			bom + `{"phone":13812345678}`, bom + `{"phone":"138****5678"}`, ""},
		{"compressed behind identity", http.Header{"Content-Type": {"application/json"}, "Content-Encoding": {"identity", "gzip"}},
			"\x1f\x8b...", "", "compressed body cannot be inspected"},
		{"UTF-16", http.Header{"Content-Type": {"application/json; charset=utf-16"}},
			"{\x00}\x00", "", "ambiguous or unsupported Content-Type"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, _, _, _, before := far.last()
			code, resp := post(c.body, c.h)
			got, h, _, err, n := far.last()
			if c.refuse != "" {
				if code != http.StatusBadGateway || !strings.Contains(resp, c.refuse) || n != before {
					t.Fatalf("got %d %q, backend requests %d -> %d; want a refusal naming %q", code, resp, before, n, c.refuse)
				}
				return
			}
			if code != 200 || n != before+1 || err != nil || string(got) != c.want {
				t.Fatalf("got %d %q; backend got %q (%v), want %q", code, resp, got, err, c.want)
			}
			if p := h.Get("X-User-Phone"); p != "" && p != "138****5678" {
				t.Fatalf("X-User-Phone %q", p)
			}
		})
	}
	// A protocol switch (WebSocket) is refused: the frames after it would
	// pass the masker.
	_, _, _, _, before := far.last()
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if _, _, _, _, n := far.last(); resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(b), "protocol upgrade cannot be inspected") || n != before {
		t.Fatalf("upgrade: %d %q, backend requests %d -> %d", resp.StatusCode, b, before, n)
	}
	// onCompressed: decode: a gzip body arrives masked, gzip again.
	var zb bytes.Buffer
	zw := gzip.NewWriter(&zb)
	io.WriteString(zw, `{"phone":1.3812345678e10}`)
	zw.Close()
	if code, resp := postTo(gzURL, zb.String(), http.Header{"Content-Type": {"application/json"}, "Content-Encoding": {"gzip"}}); code != 200 {
		t.Fatalf("gzip: %d %s", code, resp)
	}
	gotGz, hGz, _, errGz, _ := farGz.last()
	zr, err := gzip.NewReader(bytes.NewReader(gotGz))
	if err != nil || errGz != nil || hGz.Get("Content-Encoding") != "gzip" {
		t.Fatalf("gzip: backend got %q (%v, %v), Content-Encoding %q", gotGz, err, errGz, hGz.Get("Content-Encoding"))
	}
	if plain, err := io.ReadAll(zr); err != nil || string(plain) != `{"phone":"138****5678"}` {
		t.Fatalf("gzip: backend got %q, %v", plain, err)
	}
	// A header rule covers the '_' spelling WSGI and CGI backends read as
	// the same header (the agent may also drop such headers, or refuse the
	// request: either way the number does not arrive).
	_, _, _, _, before = far.last()
	code, _ := post(`{}`, http.Header{"Content-Type": {"application/json"}, "X_User_Phone": {"13812345678"}})
	got, h, _, _, n := far.last()
	if code >= 400 && code < 500 && n == before {
		return // refused by the agent's header rules
	}
	if code != 200 || string(got) != `{}` || n != before+1 {
		t.Fatalf("got %d, backend got %q", code, got)
	}
	for k, vs := range h {
		if strings.Contains(strings.Join(vs, ","), "12345678") {
			t.Fatalf("header %s: %q arrived unmasked", k, vs)
		}
	}
}
