package control

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/audit"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// adminCertHTTP is an HTTPS client of s's admin API presenting an admin
// client certificate, as a browser with one installed does on every
// request to the control plane, whichever site made it.
func adminCertHTTP(t *testing.T, s *Server) *http.Client {
	t.Helper()
	key, _ := identity.NewKey()
	id, _ := identity.AdminID(s.CA().TrustDomain(), "browser")
	certs, err := s.CA().Sign(key.Public(), id, identity.IssueOptions{TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(s.CA().Roots()[0])
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots,
		Certificates: []tls.Certificate{{Certificate: identity.DERs(certs), PrivateKey: key}}}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// TestAdminAPIRefusesCrossSiteWrites: a browser holding an admin client
// certificate presents it on a request any web page makes it send, such
// as a form posting text/plain "JSON" to /v1/apply, so a change of state
// that a browser marks cross-site (Sec-Fetch-Site, or an Origin that is
// not the control plane's) is refused whatever its credentials; the same
// request same-origin, or from a client that is no browser (the CLI sends
// neither header), goes through, and a cross-site GET still reads.
func TestAdminAPIRefusesCrossSiteWrites(t *testing.T) {
	s := startSecure(t)
	c := adminCertHTTP(t, s)
	base := "https://" + s.AdminAddr()
	doc := func(name string) string {
		// A form's text/plain body is NAME=VALUE: the '=' hides in a label.
		return `{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"` + name +
			`","namespace":"csrf","labels":{"f":"="}},"spec":{"ports":[{"name":"http","port":80,"protocol":"http"}]}}` + "\r\n"
	}
	do := func(method, path, body string, hdr map[string]string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "text/plain") // what a cross-site form can send
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	stored := func(name string) bool {
		objs, _, err := s.reg.list(api.KindService)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range objs {
			if o.GetMeta().Name == name {
				return true
			}
		}
		return false
	}
	for _, tc := range []struct {
		name string
		hdr  map[string]string
	}{
		{"cross-site", map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}},
		{"same-site", map[string]string{"Sec-Fetch-Site": "same-site", "Origin": "https://other." + s.AdminAddr()}},
		{"foreign-origin", map[string]string{"Origin": "https://evil.example"}},
		{"null-origin", map[string]string{"Origin": "null"}},
	} {
		if code, body := do("POST", "/v1/apply", doc("evil-"+tc.name), tc.hdr); code != http.StatusForbidden || stored("evil-"+tc.name) {
			t.Errorf("%s POST /v1/apply: %d %s, stored %v; want 403, nothing stored", tc.name, code, body, stored("evil-"+tc.name))
		}
		if code, body := do("POST", "/ui/login", "token=x", tc.hdr); code != http.StatusForbidden {
			t.Errorf("%s POST /ui/login: %d %s; want 403", tc.name, code, body)
		}
	}
	if code, body := do("GET", "/v1/services", "", map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}); code != http.StatusOK {
		t.Errorf("cross-site GET /v1/services: %d %s", code, body)
	}
	for _, tc := range []struct {
		name string
		hdr  map[string]string
	}{
		{"same-origin", map[string]string{"Sec-Fetch-Site": "same-origin", "Origin": base}},
		{"origin-only", map[string]string{"Origin": base}},
		{"cli", nil},
	} {
		if code, body := do("POST", "/v1/apply", doc("ok-"+tc.name), tc.hdr); code != http.StatusOK || !stored("ok-"+tc.name) {
			t.Errorf("%s POST /v1/apply: %d %s, stored %v; want 200", tc.name, code, body, stored("ok-"+tc.name))
		}
	}
}

// TestAdminHeaders: every answer of the admin port tells a browser not to
// sniff its type (an error's JSON may quote what a client sent), and the
// UI's pages may not be framed by another page (clickjacking: a browser
// with an admin client certificate would render them for it).
func TestAdminHeaders(t *testing.T) {
	s := startSecure(t)
	c := adminCertHTTP(t, s)
	for _, tc := range []struct {
		path  string
		code  int
		frame bool // an HTML page: no framing
	}{
		{"/ui", http.StatusOK, true},
		{"/ui/login", http.StatusOK, true},
		{"/ui/api/state", http.StatusOK, false},
		{"/ui/static/ui.js", http.StatusOK, false},
		{"/v1/services", http.StatusOK, false},
		{"/v1/nosuch<b>", http.StatusNotFound, false},
	} {
		resp, err := c.Get("https://" + s.AdminAddr() + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		h := resp.Header
		if resp.StatusCode != tc.code || h.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s: %d, X-Content-Type-Options %q; want %d, nosniff", tc.path, resp.StatusCode, h.Get("X-Content-Type-Options"), tc.code)
		}
		if tc.frame && (h.Get("X-Frame-Options") != "DENY" || !strings.Contains(h.Get("Content-Security-Policy"), "frame-ancestors 'none'")) {
			t.Errorf("GET %s: X-Frame-Options %q, CSP %q; want DENY and frame-ancestors 'none'", tc.path, h.Get("X-Frame-Options"), h.Get("Content-Security-Policy"))
		}
	}
}

// TestUIScrapeFollowsNoRedirect: the UI scrapes a node whose heartbeats
// carry no counters at the adminAddress the node registered itself. A
// node (a compromised agent) must not turn that into requests of the
// control plane to wherever it likes: a redirect is a failed scrape, not
// followed.
func TestUIScrapeFollowsNoRedirect(t *testing.T) {
	s := startSecure(t)
	var hits atomic.Int64
	inside := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1) // say, a cloud metadata endpoint only the control plane reaches
	}))
	defer inside.Close()
	var asked atomic.Int64
	agentAdmin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		http.Redirect(w, r, inside.URL+"/latest/meta-data", http.StatusFound)
	}))
	defer agentAdmin.Close()

	svid := signNode(t, s.CA(), "s1", "n1", time.Hour)
	src := identity.NewSource()
	src.SetBundles(s.CA().Bundle())
	src.SetSVID(svid)
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", s.SyncAddr(),
		src.ClientConfig(identity.AuthorizeID(identity.ControlID(s.CA().TrustDomain())), identity.ALPNSync))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	n := &api.Node{Meta: api.Meta{Name: "n1"}, Spec: api.NodeSpec{Site: "s1", Region: "east", MeshAddress: "127.0.0.1:1",
		AdminAddress: strings.TrimPrefix(agentAdmin.URL, "http://")}}
	if err := wire.Write(c, &wire.Message{Type: wire.TypeHello, Protocol: wire.ProtocolVersion, Capabilities: []string{wire.CapPolicy2}, Node: n}); err != nil {
		t.Fatal(err)
	}
	if m, err := wire.NewReader(c).Read(); err != nil || m.Type != wire.TypeWelcome {
		t.Fatalf("welcome: %v %+v", err, m)
	}

	ui := adminCertHTTP(t, s)
	var st UIState
	testenv.WaitFor(t, 20*time.Second, "the node scraped", func() bool {
		resp, err := ui.Get("https://" + s.AdminAddr() + "/ui/api/state")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		st = UIState{}
		json.NewDecoder(resp.Body).Decode(&st)
		return asked.Load() > 0 // the scrape is done when the answer comes
	})
	if hits.Load() != 0 || !strings.Contains(st.Scrape["n1"], "302") {
		t.Fatalf("the control plane followed the node's redirect (%d requests); scrape error %q", hits.Load(), st.Scrape["n1"])
	}
}

// TestUIEscapesStoredValues: what agents and clients put in the records
// the UI shows (here a denial's actor, object and reason, and a node's
// name in the embedded state) reaches the page as text: html/template
// escapes it in the markup, and the state embedded for ui.js is JSON with
// <, > and & escaped, which cannot close its <script> element.
func TestUIEscapesStoredValues(t *testing.T) {
	s := startSecure(t)
	evil := []string{`<script>alert(1)</script>`, `"><img src=x onerror=alert(2)>`, `</script><script>alert(3)</script>`, "\u2028'; alert(4)//"}
	s.ui.noteAudit([]audit.Record{{Node: "n1", Seq: 1, Decision: audit.Deny, Actor: evil[0], Object: evil[1], Reason: evil[2], Action: evil[3]}})
	resp, err := adminCertHTTP(t, s).Get("https://" + s.AdminAddr() + "/ui")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	page := string(b)
	for _, bad := range []string{"<script>alert", "<img", "</script><script>"} {
		if strings.Contains(page, bad) {
			t.Errorf("page holds %q unescaped", bad)
		}
	}
	if strings.Count(page, "<script") != 2 || strings.Count(page, "</script>") != 2 {
		t.Errorf("page has %d <script and %d </script>, want 2 each (ui.js, the state)", strings.Count(page, "<script"), strings.Count(page, "</script>"))
	}
	_, rest, _ := strings.Cut(page, `<script type="application/json" id="state">`)
	js, _, _ := strings.Cut(rest, "</script>")
	var st UIState
	if err := json.Unmarshal([]byte(js), &st); err != nil || len(st.Denials) != 1 || st.Denials[0].Actor != evil[0] || st.Denials[0].Reason != evil[2] {
		t.Fatalf("embedded state: %v, %+v", err, st.Denials)
	}
}

// TestApplyRefusesSharedSubscriptionTopics: the agents authorize a shared
// subscription $share/GROUP/FILTER as the FILTER it receives, so a policy
// naming a $share/... filter would never match: a DENY that denies
// nothing. Apply refuses it, naming the field.
func TestApplyRefusesSharedSubscriptionTopics(t *testing.T) {
	s := startSecure(t)
	c := adminCertHTTP(t, s)
	for _, to := range []string{`{"subscribe":["alerts/#","$share/g/secret/#"]}`, `{"publish":["$share/g/a"]}`} {
		doc := `{"apiVersion":"fogmesh.io/v1alpha1","kind":"AuthorizationPolicy","metadata":{"name":"p","namespace":"shop"},` +
			`"spec":{"service":"broker","action":"DENY","rules":[{"to":[` + to + `]}]}}`
		resp, err := c.Post("https://"+s.AdminAddr()+"/v1/apply", "application/json", strings.NewReader(doc))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), "$share") || !strings.Contains(string(b), "spec.rules[0].to[0]") {
			t.Errorf("%s: %d %s; want 400 naming the filter", to, resp.StatusCode, b)
		}
	}
	objs, _, _ := s.reg.list(api.KindAuthorizationPolicy)
	if len(objs) != 0 {
		t.Fatalf("%d policies stored", len(objs))
	}
}
