package egress

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/fogmesh/fogmesh/internal/api"
)

// TestSelects: which destinations each kind of condition selects; the
// sending node's own workloads never.
func TestSelects(t *testing.T) {
	dests := []struct {
		name string
		d    Dest
	}{
		{"local", Dest{SameNode: true, SameSite: true, SameRegion: true, Site: "s1", Region: "r1"}},
		{"near", Dest{SameSite: true, SameRegion: true, Site: "s1", Region: "r1"}},
		{"otherSite", Dest{SameRegion: true, Site: "s2", Region: "r1"}},
		{"cloud", Dest{Site: "dc-1", Region: "cloud"}},
		{"static", Dest{}},
	}
	for _, c := range []struct {
		when api.EgressWhen
		want string
	}{
		{api.EgressWhen{LeavingSite: true}, "otherSite cloud static"},
		{api.EgressWhen{LeavingRegion: true}, "cloud static"},
		{api.EgressWhen{ToRegions: []string{"cloud"}}, "cloud"},
		{api.EgressWhen{ToSites: []string{"s1", "s2"}}, "near otherSite"},
		{api.EgressWhen{}, ""},
	} {
		r := Rule{When: c.when}
		var got []string
		for _, d := range dests {
			if r.Selects(d.d) {
				got = append(got, d.name)
			}
		}
		if strings.Join(got, " ") != c.want {
			t.Errorf("%+v selects %v, want %q", c.when, got, c.want)
		}
	}
}

// backend records what a real HTTP server received.
type backend struct {
	mu     sync.Mutex
	n      int
	body   string
	header http.Header
}

func startBackend(t *testing.T) (*backend, string) {
	b := &backend{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		b.mu.Lock()
		b.n++
		b.body, b.header = string(body), r.Header.Clone()
		b.mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	return b, srv.URL
}

func (b *backend) last() (int, string, http.Header) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.n, b.body, b.header
}

func rules(t *testing.T, js string) []Rule {
	t.Helper()
	var rs []api.EgressRule
	if err := json.Unmarshal([]byte(js), &rs); err != nil {
		t.Fatal(err)
	}
	return Compile(rs)
}

const piiRule = `[{"name":"pii","when":{"leavingSite":true},"mask":{"jsonPaths":[{"path":"$.customer.name"}],
	"headers":[{"name":"x-user-phone"}],"keepFirst":1,"keepLast":1}}]`

// counts collects what the hooks report.
type counts struct {
	mu     sync.Mutex
	masked map[string]int
	bodies []string
}

func (c *counts) hooks() Hooks {
	c.masked, c.bodies = map[string]int{}, nil
	return Hooks{
		Masked: func(d string, n int) { c.mu.Lock(); c.masked[d] += n; c.mu.Unlock() },
		Body:   func(rule, result string) { c.mu.Lock(); c.bodies = append(c.bodies, rule+" "+result); c.mu.Unlock() },
	}
}

// TestRoundTrip: through a real HTTP transport to a real server, a
// request to another site arrives with its JSON field and header masked
// and is counted; the same request within the site arrives unchanged; a
// body the masker cannot judge, or a rule that did not compile, is
// refused before anything is sent.
func TestRoundTrip(t *testing.T) {
	be, url := startBackend(t)
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	const body = `{"customer":{"name":"Alice Smith","city":"Lyon"}}`
	send := func(rs []Rule, d Dest, h Hooks, contentTypes ...string) (*http.Response, error) {
		req, _ := http.NewRequest(http.MethodPost, url+"/orders", strings.NewReader(body))
		req.Header["Content-Type"] = contentTypes
		req.Header.Set("X-User-Phone", "13812345678")
		resp, err := RoundTrip(tr, rs, d, req, h)
		if resp != nil {
			resp.Body.Close()
		}
		return resp, err
	}
	pii := rules(t, piiRule)
	near := Dest{SameSite: true, SameRegion: true, Site: "s1", Region: "r1"}
	far := Dest{SameRegion: true, Site: "s2", Region: "r1"}

	var c counts
	if _, err := send(pii, near, c.hooks(), "application/json"); err != nil {
		t.Fatal(err)
	}
	if _, got, h := be.last(); got != body || h.Get("X-User-Phone") != "13812345678" {
		t.Fatalf("within the site: body %s, phone %q", got, h.Get("X-User-Phone"))
	}
	if len(c.masked)+len(c.bodies) != 0 {
		t.Fatalf("within the site, counted %v %v", c.masked, c.bodies)
	}

	if _, err := send(pii, far, c.hooks(), "application/json"); err != nil {
		t.Fatal(err)
	}
	_, got, h := be.last()
	if want := `{"customer":{"name":"A*********h","city":"Lyon"}}`; got != want {
		t.Fatalf("to another site: body %s, want %s", got, want)
	}
	if p := h.Get("X-User-Phone"); p != "1*********8" {
		t.Fatalf("to another site: phone %q", p)
	}
	if c.masked["json-path"] != 1 || c.masked["header"] != 1 || strings.Join(c.bodies, ",") != "pii masked" {
		t.Fatalf("to another site, counted %v %v", c.masked, c.bodies)
	}

	for _, bad := range []struct {
		name  string
		rules []Rule
		types []string
	}{
		{"two content types", pii, []string{"application/json", "text/plain"}},
		{"rule that did not compile", rules(t, `[{"name":"broken","when":{"leavingSite":true},"mask":{"jsonPaths":[{"path":"customer"}]}}]`), []string{"application/json"}},
	} {
		n, _, _ := be.last()
		_, err := send(bad.rules, far, c.hooks(), bad.types...)
		if !errors.Is(err, ErrMasking) {
			t.Errorf("%s: err %v, want ErrMasking", bad.name, err)
		}
		if m, _, _ := be.last(); m != n {
			t.Errorf("%s: the request reached the backend", bad.name)
		}
		if len(c.bodies) != 1 || !strings.HasSuffix(c.bodies[0], " rejected") {
			t.Errorf("%s: counted %v", bad.name, c.bodies)
		}
	}
}
