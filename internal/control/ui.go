package control

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"io/fs"
	"net/http"
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
// Rates come from scraping each ready node's agent API (its registered
// adminAddress) twice and subtracting (package meshstat).

//go:embed ui
var uiFiles embed.FS

// uiCookie carries the admin token of a browser that logged in.
const uiCookie = "fogmesh_ui"

// maxDenials is how many recent denials the UI keeps (in memory: they
// start empty after a restart; the audit chain keeps every one).
const maxDenials = 50

// uiState is the UI's memory: the last scrape of each node and the
// recent denials seen in incoming audit batches. The zero value works.
type uiState struct {
	mu       sync.Mutex // guards the following; held while scraping
	last     map[string]meshstat.Scrape
	lastAt   time.Time
	services []meshstat.Row
	edges    []meshstat.Row
	errs     map[string]string

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
		s.renderLogin(w, "")
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

// uiHeaders: nothing but this origin's own files may run or load.
func uiHeaders(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-store")
}

func (s *Server) renderLogin(w http.ResponseWriter, msg string) {
	uiHeaders(w)
	if msg != "" {
		w.WriteHeader(http.StatusUnauthorized)
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
	if _, err := s.sec.adminRole(tok); err != nil {
		s.log.Warn("control: ui login refused", "remote", r.RemoteAddr, "err", err)
		s.renderLogin(w, "token refused: "+err.Error())
		return
	}
	http.SetCookie(w, &http.Cookie{Name: uiCookie, Value: tok, Path: "/ui", HttpOnly: true, Secure: r.TLS != nil,
		SameSite: http.SameSiteStrictMode, MaxAge: 12 * 3600})
	http.Redirect(w, r, "/ui", http.StatusSeeOther)
}

// uiSnapshot gathers what the UI shows. Rates need two scrapes: the first
// call scrapes twice a second apart; later ones subtract the scrape
// before (at most one scrape a second, shared by every viewer).
func (s *Server) uiSnapshot(ctx context.Context) (*UIState, error) {
	objs, rev, err := s.reg.list(api.KindNode)
	if err != nil {
		return nil, err
	}
	st := &UIState{Control: s.cfg.Name, Revision: rev, Time: time.Now().UTC(), Paths: s.Paths(), Denials: []audit.Record{}}
	targets := map[string]string{}
	byRegion := map[string]map[string][]api.Node{}
	for _, o := range objs {
		n := *o.(*api.Node)
		s.fillLive(&n)
		if byRegion[n.Spec.Region] == nil {
			byRegion[n.Spec.Region] = map[string][]api.Node{}
		}
		byRegion[n.Spec.Region][n.Spec.Site] = append(byRegion[n.Spec.Region][n.Spec.Site], n)
		if n.Status.Ready && n.Spec.AdminAddress != "" {
			targets[n.Meta.Name] = "http://" + n.Spec.AdminAddress + "/metrics"
		}
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
	s.ui.mu.Lock()
	defer s.ui.mu.Unlock()
	if time.Since(s.ui.lastAt) >= time.Second {
		prev := s.ui.last
		if time.Since(s.ui.lastAt) > time.Minute {
			prev, _ = scrapeMetrics(ctx, targets)
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(time.Second):
			}
		}
		cur, errs := scrapeMetrics(ctx, targets)
		s.ui.services, s.ui.edges = meshstat.Compute(prev, cur)
		meshstat.Clean(s.ui.services)
		meshstat.Clean(s.ui.edges)
		s.ui.last, s.ui.lastAt, s.ui.errs = cur, time.Now(), errs
	}
	st.Services, st.Edges, st.Scrape = s.ui.services, s.ui.edges, s.ui.errs
	s.ui.dmu.Lock()
	for i := len(s.ui.denials) - 1; i >= 0; i-- {
		st.Denials = append(st.Denials, s.ui.denials[i])
	}
	s.ui.dmu.Unlock()
	return st, nil
}

// maxScrapes bounds the agents scraped at once.
const maxScrapes = 64

// uiHTTP scrapes agents: plain HTTP, short timeouts.
var uiHTTP = &http.Client{Timeout: 2 * time.Second}

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
