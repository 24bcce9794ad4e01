package control

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"io/fs"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/audit"
	"github.com/fogmesh/fogmesh/internal/meshstat"
	"github.com/fogmesh/fogmesh/internal/promtext"
)

// The web UI: server-rendered HTML and one small embedded script, no CDN
// and no build step, so it works at a site cut off from the internet.
//
//	GET  /ui             regions → sites → nodes, the service graph with
//	                     live rates, each node's paths, recent denials
//	GET  /ui/api/state   the same as JSON
//	GET  /ui/static/...  ui.js, ui.css (no authentication: no data)
//	GET  /ui/login       a form for an admin token (no authentication)
//	POST /ui/login       sets the token as an HttpOnly cookie for /ui
//
// Behind the admin authentication: a client certificate, a bearer token,
// or the cookie, which authenticate accepts for GET under /ui only (a
// cookie sent along by a forged cross-site form cannot change anything).
// Rates come from the golden counters agents send in their heartbeats
// (stats.go), subtracted by package meshstat; a node whose agent predates
// them is scraped at its registered adminAddress instead.

//go:embed ui
var uiFiles embed.FS

// uiCookie carries the admin token of a browser that logged in.
const uiCookie = "fogmesh_ui"

// maxDenials is how many recent denials the UI keeps in memory; at start
// they are read back from the stored chains (loadDenials), which keep
// every one.
const maxDenials = 50

// At start, loadDenials reads the tail (denialTailBytes) of the
// denialChains node chains written last: a bounded read, whatever the
// number of nodes, that finds the recent denials of all but a mesh where
// more chains than that saw their last records since.
const (
	denialChains    = 64
	denialTailBytes = 64 << 10
)

// uiState is the UI's memory: the last scrape of each node and the
// recent denials seen in incoming audit batches. The zero value works.
type uiState struct {
	mu sync.Mutex // guards the following; held while scraping
	// prev and last are the last two scrapes of the nodes whose
	// heartbeats carry no counters (older agents), lastAt when.
	prev, last map[string]meshstat.Scrape
	lastAt     time.Time
	errs       map[string]string

	// dmu guards denials apart from mu: audit ingest must never wait for
	// a scrape.
	dmu     sync.Mutex
	denials []audit.Record // newest last
}

// noteAudit keeps the denials among records a node shipped.
func (u *uiState) noteAudit(recs []audit.Record) {
	u.dmu.Lock()
	defer u.dmu.Unlock()
	for _, r := range recs {
		if r.Decision == audit.Deny {
			u.denials = append(u.denials, r)
		}
	}
	if n := len(u.denials); n > maxDenials {
		u.denials = slices.Clone(u.denials[n-maxDenials:])
	}
}

// loadDenials fills the recent denials from the stored audit chains of
// the nodes (StateDir/audit/nodes/<node>, archived chains left out), so
// the UI shows them across a restart.
func (s *Server) loadDenials() {
	dir := s.auditNodesDir()
	ents, err := os.ReadDir(dir)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			s.log.Warn("control: recent denials not loaded", "err", err)
		}
		return
	}
	type chain struct {
		node string
		mod  time.Time
	}
	var chains []chain
	for _, e := range ents {
		if !e.IsDir() || strings.Contains(e.Name(), ".archived-") || !audit.ValidNodeName(e.Name()) {
			continue
		}
		fi, err := os.Stat(filepath.Join(dir, e.Name(), "audit.log"))
		if err != nil {
			continue
		}
		chains = append(chains, chain{e.Name(), fi.ModTime()})
	}
	slices.SortFunc(chains, func(a, b chain) int { return b.mod.Compare(a.mod) })
	var denials []audit.Record
	for _, c := range chains[:min(len(chains), denialChains)] {
		recs, err := audit.Tail(filepath.Join(dir, c.node), "audit.log", denialTailBytes)
		if err != nil {
			s.log.Warn("control: recent denials of a node not loaded", "node", c.node, "err", err)
			continue
		}
		for _, r := range recs {
			if r.Decision == audit.Deny && r.Node == c.node {
				denials = append(denials, r)
			}
		}
	}
	s.ui.loadDenials(denials)
}

// loadDenials merges stored denials with those noted since the start,
// newest last by time, one of each node and seq.
func (u *uiState) loadDenials(stored []audit.Record) {
	u.dmu.Lock()
	defer u.dmu.Unlock()
	type id struct {
		node string
		seq  uint64
	}
	seen := map[id]bool{}
	var all []audit.Record
	for _, r := range append(stored, u.denials...) {
		if !seen[id{r.Node, r.Seq}] {
			seen[id{r.Node, r.Seq}] = true
			all = append(all, r)
		}
	}
	slices.SortStableFunc(all, func(a, b audit.Record) int { return a.Time.Compare(b.Time) })
	if n := len(all); n > maxDenials {
		all = all[n-maxDenials:]
	}
	u.denials = all
}

// UIState is the body of GET /ui/api/state and what /ui renders.
type UIState struct {
	Control  string            `json:"control"`
	Revision uint64            `json:"revision"`
	Time     time.Time         `json:"time"`
	Regions  []UIRegion        `json:"regions"`
	Services []meshstat.Row    `json:"services"`
	Edges    []meshstat.Row    `json:"edges"`
	Paths    []NodePath        `json:"paths"`
	Denials  []audit.Record    `json:"denials"`
	Scrape   map[string]string `json:"scrapeErrors,omitempty"`
}

// UIRegion is a region of the UI's map, its sites sorted by name.
type UIRegion struct {
	Name  string   `json:"name"`
	Sites []UISite `json:"sites"`
}

// UISite is a site of the UI's map, its nodes sorted by name.
type UISite struct {
	Name  string     `json:"name"`
	Nodes []api.Node `json:"nodes"`
}

func (s *Server) uiRoutes(mux *http.ServeMux) {
	static, _ := fs.Sub(uiFiles, "ui")
	mux.Handle("GET /ui/static/", http.StripPrefix("/ui/static/", http.FileServerFS(static)))
	mux.HandleFunc("GET /ui", s.handleUI)
	mux.HandleFunc("GET /ui/{$}", s.handleUI)
	mux.HandleFunc("GET /ui/api/state", func(w http.ResponseWriter, r *http.Request) {
		st, err := s.uiSnapshot(r.Context())
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		writeJSON(w, http.StatusOK, st)
	})
	mux.HandleFunc("GET /ui/login", func(w http.ResponseWriter, r *http.Request) {
		s.renderLogin(w, 0, "")
	})
	mux.HandleFunc("POST /ui/login", s.handleUILogin)
}

var uiTemplates = template.Must(template.New("").Funcs(template.FuncMap{
	"pct": func(f float64) string {
		if f < 0 {
			return "-"
		}
		return fmt.Sprintf("%.1f%%", 100*f)
	},
	"ms": func(f float64) string {
		if f < 0 {
			return "-"
		}
		return fmt.Sprintf("%.1f ms", 1000*f)
	},
	"ago": func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return time.Since(t).Round(time.Second).String() + " ago"
	},
	"json": func(v any) (template.JS, error) {
		b, err := json.Marshal(v)
		return template.JS(b), err
	},
}).ParseFS(uiFiles, "ui/*.html"))

func (s *Server) handleUI(w http.ResponseWriter, r *http.Request) {
	st, err := s.uiSnapshot(r.Context())
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	var b bytes.Buffer
	if err := uiTemplates.ExecuteTemplate(&b, "index.html", st); err != nil {
		writeError(w, http.StatusInternalServerError, fmt.Errorf("ui: %w", err))
		return
	}
	uiHeaders(w)
	w.Write(b.Bytes())
}

// uiHeaders: nothing but this origin's own files may run or load, and
// no other page may frame the UI (X-Content-Type-Options: nosniff is set
// on every admin answer, adminHandler).
func uiHeaders(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
	w.Header().Set("X-Frame-Options", "DENY") // frame-ancestors for browsers without CSP 2
	w.Header().Set("Referrer-Policy", "no-referrer")
	w.Header().Set("Cache-Control", "no-store")
}

// renderLogin writes the login page, with msg and code (0: 200) if not "".
func (s *Server) renderLogin(w http.ResponseWriter, code int, msg string) {
	uiHeaders(w)
	if msg != "" {
		w.WriteHeader(code)
	}
	uiTemplates.ExecuteTemplate(w, "login.html", map[string]any{"Error": msg, "Insecure": s.sec == nil})
}

func (s *Server) handleUILogin(w http.ResponseWriter, r *http.Request) {
	if s.sec == nil {
		http.Redirect(w, r, "/ui", http.StatusSeeOther)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
	tok := strings.TrimSpace(r.PostFormValue("token"))
	if _, err := s.sec.adminRole(tok); errors.Is(err, errTokenStore) {
		// The token may be right: not its refusal, not counted (as the
		// Bearer header's and the cookie's 503).
		s.log.Warn("control: ui login: token not checked", "remote", r.RemoteAddr, "err", err)
		s.renderLogin(w, http.StatusServiceUnavailable, "the token could not be checked, try again: "+err.Error())
		return
	} else if err != nil {
		if s.throttle(w, r, err) {
			uiHeaders(w)
			w.WriteHeader(http.StatusTooManyRequests)
			uiTemplates.ExecuteTemplate(w, "login.html", map[string]any{"Error": errAuthThrottled.Error(), "Insecure": false})
			return
		}
		s.authFailed(r, "ui login", err)
		s.renderLogin(w, http.StatusUnauthorized, "token refused: "+err.Error())
		return
	}
	http.SetCookie(w, &http.Cookie{Name: uiCookie, Value: tok, Path: "/ui", HttpOnly: true, Secure: r.TLS != nil,
		SameSite: http.SameSiteStrictMode, MaxAge: 12 * 3600})
	http.Redirect(w, r, "/ui", http.StatusSeeOther)
}

// uiSnapshot gathers what the UI shows. Rates come from the agents'
// heartbeats (stats.go); only a ready node whose heartbeats carry no
// counters (an older agent) is scraped at its adminAddress, which needs
// two scrapes: the first call scrapes twice a second apart; later ones
// subtract the scrape before (at most one scrape a second, shared by
// every viewer).
func (s *Server) uiSnapshot(ctx context.Context) (*UIState, error) {
	objs, rev, err := s.reg.list(api.KindNode)
	if err != nil {
		return nil, err
	}
	st := &UIState{Control: s.cfg.Name, Revision: rev, Time: time.Now().UTC(), Paths: s.Paths(), Denials: []audit.Record{}}
	sites := map[string]string{}
	byRegion := map[string]map[string][]api.Node{}
	for _, o := range objs {
		n := *o.(*api.Node)
		s.fillLive(&n)
		if byRegion[n.Spec.Region] == nil {
			byRegion[n.Spec.Region] = map[string][]api.Node{}
		}
		byRegion[n.Spec.Region][n.Spec.Site] = append(byRegion[n.Spec.Region][n.Spec.Site], n)
		sites[n.Meta.Name] = n.Spec.Site
	}
	for _, region := range sortedKeys(byRegion) {
		ur := UIRegion{Name: region}
		for _, site := range sortedKeys(byRegion[region]) {
			nodes := byRegion[region][site]
			slices.SortFunc(nodes, func(a, b api.Node) int { return strings.Compare(a.Meta.Name, b.Meta.Name) })
			ur.Sites = append(ur.Sites, UISite{Name: site, Nodes: nodes})
		}
		st.Regions = append(st.Regions, ur)
	}
	view, peerErrs := s.statsView(ctx)
	prev, cur, _ := view.scrapes(time.Now().Add(-s.cfg.NodeTimeout), sites)
	targets := map[string]string{}
	for _, o := range objs {
		n := o.(*api.Node)
		if _, reports := cur[n.Meta.Name]; !reports && n.Status.Ready && n.Spec.AdminAddress != "" {
			targets[n.Meta.Name] = "http://" + n.Spec.AdminAddress + "/metrics"
		}
	}
	s.ui.mu.Lock()
	defer s.ui.mu.Unlock()
	if len(targets) == 0 {
		s.ui.prev, s.ui.last, s.ui.lastAt, s.ui.errs = nil, nil, time.Time{}, nil
	} else if time.Since(s.ui.lastAt) >= time.Second {
		before := s.ui.last
		if time.Since(s.ui.lastAt) > time.Minute {
			before, _ = scrapeMetrics(ctx, targets)
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(time.Second):
			}
		}
		now, errs := scrapeMetrics(ctx, targets)
		s.ui.prev, s.ui.last, s.ui.lastAt, s.ui.errs = before, now, time.Now(), errs
	}
	for node := range targets { // a node's scrapes stand in for its missing heartbeat counters
		if sc, ok := s.ui.prev[node]; ok {
			prev[node] = sc
		}
		if sc, ok := s.ui.last[node]; ok {
			cur[node] = sc
		}
	}
	st.Services, st.Edges = meshstat.Compute(prev, cur)
	meshstat.Clean(st.Services)
	meshstat.Clean(st.Edges)
	st.Scrape = s.ui.errs
	if len(peerErrs) > 0 {
		st.Scrape = maps.Clone(s.ui.errs) // s.ui.errs is shared with other requests
		if st.Scrape == nil {
			st.Scrape = map[string]string{}
		}
		for replica, err := range peerErrs {
			st.Scrape["replica "+replica] = err
		}
	}
	s.ui.dmu.Lock()
	for i := len(s.ui.denials) - 1; i >= 0; i-- {
		st.Denials = append(st.Denials, s.ui.denials[i])
	}
	s.ui.dmu.Unlock()
	return st, nil
}

// maxScrapes bounds the agents scraped at once.
const maxScrapes = 64

// uiHTTP scrapes agents: plain HTTP, short timeouts, and no redirect
// followed: the address is the one a node registered itself, and the
// control plane must not fetch whatever URL the node points it to.
var uiHTTP = &http.Client{Timeout: 2 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// scrapeMetrics scrapes every target (node → URL) at once.
func scrapeMetrics(ctx context.Context, targets map[string]string) (map[string]meshstat.Scrape, map[string]string) {
	type res struct {
		node string
		sc   meshstat.Scrape
		err  error
	}
	ch := make(chan res, len(targets))
	sem := make(chan struct{}, maxScrapes)
	for node, url := range targets {
		go func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			sc, err := scrapeOne(ctx, url)
			ch <- res{node, sc, err}
		}()
	}
	out, errs := map[string]meshstat.Scrape{}, map[string]string{}
	for range targets {
		r := <-ch
		if r.err != nil {
			errs[r.node] = r.err.Error()
			continue
		}
		out[r.node] = r.sc
	}
	return out, errs
}

func scrapeOne(ctx context.Context, url string) (meshstat.Scrape, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return meshstat.Scrape{}, err
	}
	resp, err := uiHTTP.Do(req)
	if err != nil {
		return meshstat.Scrape{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return meshstat.Scrape{}, fmt.Errorf("%s: %s", url, resp.Status)
	}
	at := time.Now()
	ss, err := promtext.Parse(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		return meshstat.Scrape{}, fmt.Errorf("%s: %w", url, err)
	}
	return meshstat.Scrape{At: at, Samples: ss}, nil
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
