package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/fogmesh/fogmesh/internal/testenv"
)

// artifactsDir is where browser tests keep their screenshots:
// $FOGMESH_ARTIFACTS, else $TMPDIR/fogmesh-artifacts (kept after the test).
func artifactsDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("FOGMESH_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "fogmesh-artifacts")
	}
	dir = filepath.Join(dir, t.Name())
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// adminSPKI is the base64 SHA-256 of the admin API certificate's public
// key: Chromium is told to accept exactly that key (the control plane's
// own CA is not in its trust store), not every certificate.
func adminSPKI(t *testing.T, addr, caFile string) string {
	t.Helper()
	b, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(b)
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sum := sha256.Sum256(c.ConnectionState().PeerCertificates[0].RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(sum[:])
}

// TestWebUIInChromium: the control plane's web UI in headless Chromium
// (Debian's chromium) against the demo topology as real processes, with
// traffic: sign in with the admin token, and the page shows two regions,
// three sites and four ready nodes, the hello service's edges with
// non-zero rates (table and drawn lines), paths to peers, the denial of a
// request an authorization policy refused, and logs no
// console error or exception, also across its own refreshes. Screenshots
// go to artifactsDir.
func TestWebUIInChromium(t *testing.T) {
	chromium := testenv.NeedTool(t, "chromium")
	m := startDemoMesh(t)
	server, caFile, token := m.admin[1], m.admin[3], m.admin[5]
	u, _ := url.Parse(server)

	// Without credentials the UI sends the browser to its login page, and
	// the UI's cookie opens nothing but the UI.
	noRedirect := uiClient(t, caFile)
	resp, err := noRedirect.Get(server + "/ui")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/login" {
		t.Fatalf("GET /ui without credentials: %s %q", resp.Status, resp.Header.Get("Location"))
	}
	req, _ := http.NewRequest("POST", server+"/v1/apply", strings.NewReader("[]"))
	req.AddCookie(&http.Cookie{Name: "fogmesh_ui", Value: token})
	if resp, err = noRedirect.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("POST /v1/apply with the UI cookie: %s, want 401", resp.Status)
	}
	req, _ = http.NewRequest("GET", server+"/v1/nodes", nil)
	req.AddCookie(&http.Cookie{Name: "fogmesh_ui", Value: token})
	if resp, err = noRedirect.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("GET /v1/nodes with the UI cookie: %s, want 401", resp.Status)
	}

	// A denied request, for the UI's list of recent denials.
	deny := filepath.Join(t.TempDir(), "deny.yaml")
	os.WriteFile(deny, []byte("apiVersion: fogmesh.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: no-forbidden, namespace: demo}\n"+
		"spec:\n  service: hello\n  action: DENY\n  rules: [{to: [{paths: [/forbidden]}]}]\n"), 0o644)
	if out, code := run(t, append([]string{"apply", "-f", deny}, m.admin...)...); code != 0 {
		t.Fatal(out)
	}
	testenv.WaitFor(t, 20*time.Second, "a request to /forbidden denied", func() bool {
		resp, err := http.Get(m.vipOf(m.agents[0], true) + "forbidden")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusForbidden
	})
	stop := make(chan struct{})
	wait := m.traffic(stop)
	defer func() { close(stop); wait() }()

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.NoSandbox, // the tests run as root
		chromedp.Flag("ignore-certificate-errors-spki-list", adminSPKI(t, u.Host, caFile)),
		chromedp.WindowSize(1280, 1000),
	)
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancel()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, cancel = context.WithTimeout(ctx, 120*time.Second)
	defer cancel()
	// Every console error or warning, uncaught exception and browser log
	// entry of level warning or error (a CSP violation, a failed load).
	var mu sync.Mutex
	var problems []string
	consoleCtx, stopConsole := context.WithCancel(ctx)
	messages := chromedp.Console(consoleCtx)
	consoleDone := make(chan struct{})
	go func() {
		defer close(consoleDone)
		for msg, err := range messages {
			if err != nil {
				return
			}
			switch msg.Type {
			case chromedp.ConsoleError, chromedp.ConsoleWarning, chromedp.ConsoleException:
				mu.Lock()
				problems = append(problems, fmt.Sprintf("%s (%s:%d)", msg, msg.URL, msg.Line))
				mu.Unlock()
			}
		}
	}()
	dir := artifactsDir(t)
	shot := func(name string) {
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Errorf("screenshot %s: %v", name, err)
			return
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, png, 0o644); err != nil {
			t.Error(err)
		}
		t.Logf("screenshot: %s", p)
	}
	if err := chromedp.Do(ctx,
		chromedp.Navigate(server+"/ui"), // redirected to the login page
		chromedp.WaitVisible(chromedp.ID("token")),
	); err != nil {
		t.Fatal(err)
	}
	shot("login.png")
	if err := chromedp.Do(ctx,
		chromedp.SendKeys(chromedp.ID("token"), token),
		chromedp.Click(chromedp.ID("login")),
		chromedp.WaitVisible(chromedp.ID("graph-svg")),
	); err != nil {
		t.Fatal(err)
	}
	// The page refreshes itself every few seconds; wait for edges of
	// hello with a rate from every node, in the table and drawn, and paths.
	type pageCounts struct {
		Regions, Sites, Nodes, Ready, Shop1, Edges, Lines, Sources, Paths, Denials int
	}
	const js = `(() => {
	  const edges = [...document.querySelectorAll('#edges tr.edge')].filter(r => r.dataset.service === 'demo/hello' && parseFloat(r.dataset.rps) > 0);
	  return {Regions: document.querySelectorAll('.region').length, Sites: document.querySelectorAll('.site').length,
	    Nodes: document.querySelectorAll('.node').length, Ready: document.querySelectorAll('.node.ready').length,
	    Shop1: document.querySelectorAll('.site[data-site="shop-1"] .node').length,
	    Edges: edges.length, Sources: new Set(edges.map(r => r.dataset.source)).size,
	    Lines: document.querySelectorAll('#graph-svg line.edge-line').length,
	    Paths: document.querySelectorAll('#paths tr.path').length,
	    Denials: [...document.querySelectorAll('#denials tr.denial')].filter(r => r.textContent.includes('/forbidden') || r.textContent.includes('hello')).length};
	})()`
	const ready = `(() => { const c = ` + js + `; return c.Sources === 4 && c.Lines > 0 && c.Paths > 0 && c.Denials > 0 &&
	    document.getElementById('status').textContent.startsWith('live · updated'); })()`
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](ready, chromedp.WithPollingTimeout(60*time.Second))); err != nil {
		shot("timeout.png")
		html, _ := chromedp.Run(ctx, chromedp.OuterHTML(chromedp.CSS("main")))
		t.Fatalf("page never showed hello's edges from 4 nodes after a refresh: %v\n%s", err, html)
	}
	counts, err := chromedp.Run(ctx, chromedp.Evaluate[pageCounts](js))
	if err != nil {
		t.Fatal(err)
	}
	status, _ := chromedp.Run(ctx, chromedp.Text(chromedp.ID("status")))
	shot("ui.png")
	t.Logf("page: %+v, status %q", counts, status)
	if counts.Regions != 2 || counts.Sites != 3 || counts.Nodes != 4 || counts.Ready != 4 || counts.Shop1 != 2 {
		t.Fatalf("topology on the page: %+v, want 2 regions, 3 sites, 4 ready nodes (2 in shop-1)", counts)
	}
	stopConsole()
	<-consoleDone
	mu.Lock()
	defer mu.Unlock()
	if len(problems) > 0 {
		t.Fatalf("browser console:\n%s", strings.Join(problems, "\n"))
	}
}

// uiClient trusts the control plane's CA and does not follow redirects.
func uiClient(t *testing.T, caFile string) *http.Client {
	t.Helper()
	b, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(b)
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}
