package agent

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/fogmesh/fogmesh/internal/accesslog"
	"github.com/fogmesh/fogmesh/internal/httpproxy"
	"github.com/fogmesh/fogmesh/internal/tracing"
)

// Traces and access logs of the L7 path. Both hook the layer every L7
// request goes through whatever its protocol: on the client's agent
// lbTransport.RoundTrip (the HTTP/1.1 fast path and the net/http server's
// HTTP/1.1, h2c and gRPC requests alike), on the endpoint's agent
// authzServer.handle. A request gets one span per agent (client: kind
// CLIENT; endpoint's agent: kind SERVER, its child) and one access-log line
// per agent. With both off the request path pays one nil check.

// TracingConfig configures traces. Zero values take the defaults in comments.
type TracingConfig struct {
	// Endpoint is the OTLP collector; empty (the default): tracing off.
	// http/protobuf: a URL (http://collector:4318, /v1/traces added when
	// it has no path); grpc: host:port or an http(s):// URL.
	Endpoint string `json:"endpoint,omitempty"`
	// Protocol is http/protobuf (default) or grpc.
	Protocol string `json:"protocol,omitempty"`
	// SampleRatio is the share of new traces recorded, 0 to 1 (default
	// 0.01). A request that arrives with a trace context follows its
	// sampled flag (parent-based).
	SampleRatio *float64 `json:"sampleRatio,omitempty"`
	// QueueSize bounds the spans waiting for export (default 2048); more
	// are dropped and counted in fogmesh_trace_spans_dropped_total.
	QueueSize int `json:"queueSize,omitempty"`
}

// AccessLogConfig configures the access log (off by default).
type AccessLogConfig struct {
	// Path is the log file; empty (the default): no access log.
	Path string `json:"path,omitempty"`
	// Fields to write (default: all; see accesslog.Fields).
	Fields []string `json:"fields,omitempty"`
	// SampleRatio is the share of requests logged, 0 to 1 (default 1).
	SampleRatio *float64 `json:"sampleRatio,omitempty"`
	// MaxSizeMB rotates the file past this size (default 100).
	MaxSizeMB int `json:"maxSizeMB,omitempty"`
	// MaxFiles is how many rotated files are kept (default 5).
	MaxFiles int `json:"maxFiles,omitempty"`
	// Mask lists more services ("namespace/name", "namespace/*") whose
	// requests are masked. Masked requests' lines and spans carry no path,
	// query, client address or user agent. Services with egress masking
	// rules (spec.egress) are always masked.
	Mask []string `json:"mask,omitempty"`
}

// DefaultTraceSampleRatio is TracingConfig.SampleRatio's default.
const DefaultTraceSampleRatio = 0.01

func (c *TracingConfig) validate() error {
	if r := c.SampleRatio; r != nil && (*r < 0 || *r > 1) {
		return fmt.Errorf("tracing: sampleRatio %v: want 0 to 1", *r)
	}
	if c.Endpoint == "" {
		return nil
	}
	return tracing.CheckEndpoint(c.Endpoint, c.Protocol)
}

func (c *AccessLogConfig) validate() error {
	if r := c.SampleRatio; r != nil && (*r < 0 || *r > 1) {
		return fmt.Errorf("accessLog: sampleRatio %v: want 0 to 1", *r)
	}
	if c.Path != "" {
		if _, err := accesslog.CheckFields(c.Fields); err != nil {
			return err
		}
	}
	for _, m := range c.Mask {
		if ns, name, ok := strings.Cut(m, "/"); !ok || ns == "" || name == "" {
			return fmt.Errorf("accessLog: mask %q: want namespace/name or namespace/*", m)
		}
	}
	return nil
}

// observer holds the agent's exporter and access log; nil when both are off.
type observer struct {
	a        *Agent
	exp      *tracing.Exporter // nil: no traces
	sampler  tracing.Sampler
	log      *accesslog.Logger // nil: no access log
	logRatio float64
	mask     []string
}

func newObserver(a *Agent) (*observer, error) {
	tc, lc := a.cfg.Tracing, a.cfg.AccessLog
	if tc.Endpoint == "" && lc.Path == "" {
		return nil, nil
	}
	o := &observer{a: a, logRatio: 1, mask: lc.Mask}
	if tc.Endpoint != "" {
		ratio := DefaultTraceSampleRatio
		if tc.SampleRatio != nil {
			ratio = *tc.SampleRatio
		}
		o.sampler = tracing.NewSampler(ratio)
		node := a.cfg.Node
		exp, err := tracing.NewExporter(tracing.ExporterConfig{Endpoint: tc.Endpoint, Protocol: tc.Protocol, QueueSize: tc.QueueSize,
			Resource: []tracing.Attr{tracing.String("service.name", "fogmesh-agent"), tracing.String("host.name", node.Name),
				tracing.String("fogmesh.node", node.Name), tracing.String("fogmesh.site", node.Site), tracing.String("fogmesh.region", node.Region)},
			Metrics: a.cfg.Metrics, Logger: a.log.With("sub", "tracing")})
		if err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
		o.exp = exp
	}
	if lc.Path != "" {
		if lc.SampleRatio != nil {
			o.logRatio = *lc.SampleRatio
		}
		l, err := accesslog.New(accesslog.Config{Path: lc.Path, Fields: lc.Fields, MaxSize: int64(lc.MaxSizeMB) << 20,
			MaxFiles: lc.MaxFiles, Metrics: a.cfg.Metrics, Logger: a.log.With("sub", "accesslog")})
		if err != nil {
			o.close()
			return nil, fmt.Errorf("agent: %w", err)
		}
		o.log = l
	}
	return o, nil
}

func (o *observer) close() {
	if o == nil {
		return
	}
	if o.exp != nil {
		o.exp.Close()
	}
	if o.log != nil {
		o.log.Close()
	}
}

// masked reports whether requests to svc (namespace/name) are masked.
func (o *observer) masked(sv *serviceView, svc string) bool {
	if sv != nil && len(sv.svc.Spec.Egress) > 0 {
		return true
	}
	for _, m := range o.mask {
		if ok, _ := path.Match(m, svc); ok || m == svc {
			return true
		}
	}
	return false
}

// Sides of a request record.
const (
	sideClient = "client"
	sideServer = "server"
)

// reqObs is one request's span and access-log record in the making.
type reqObs struct {
	o      *observer
	side   string
	start  time.Time
	traced bool // a span is exported
	logged bool // a line is written
	sc     tracing.SpanContext
	parent tracing.SpanID

	method, host, uri, proto, client, ua string
	svc, route, src, srcNode             string
	masked                               bool
	// Client side: the endpoint the last attempt went to, and the
	// attempts so far (roundTrip sets them).
	ev                *endpointView
	attempts, retries int
	// Server side: the endpoint served.
	endpoint string

	once sync.Once
}

// begin starts a request's record: it continues or starts the trace and
// writes this hop's trace context into h (the headers sent on). It returns
// nil when the request is neither traced nor logged.
func (o *observer) begin(side string, r *http.Request, h http.Header, sv *serviceView, svc string) *reqObs {
	start := time.Now()
	parent, _ := tracing.Extract(r.Header)
	sc, traced := parent, false
	if o.exp != nil {
		id := parent.TraceID
		if !id.IsValid() {
			id = tracing.NewTraceID()
		}
		sc = tracing.SpanContext{TraceID: id, SpanID: tracing.NewSpanID(), Sampled: o.sampler.Sample(parent, id), State: parent.State}
		traced = sc.Sampled
		// Unsampled too: the next hop then follows this decision.
		tracing.Inject(h, sc, parent.SpanID)
	}
	logged := o.log != nil && (o.logRatio >= 1 || rand.Float64() < o.logRatio)
	if !traced && !logged {
		return nil // nothing allocated for a request neither traced nor logged
	}
	rec := &reqObs{o: o, side: side, start: start, svc: svc, sc: sc, parent: parent.SpanID, traced: traced, logged: logged}
	rec.masked = o.masked(sv, svc)
	rec.method, rec.host, rec.proto = r.Method, r.Host, r.Proto
	if !rec.masked {
		rec.uri, rec.client, rec.ua = r.URL.RequestURI(), r.RemoteAddr, r.Header.Get("User-Agent")
	}
	return rec
}

// end finishes the record once: status 0 means no response.
func (rec *reqObs) end(status int, grpcStatus string, err error) {
	rec.once.Do(func() { rec.finish(status, grpcStatus, err) })
}

func (rec *reqObs) finish(status int, grpcStatus string, err error) {
	now := time.Now()
	o := rec.o
	var endpoint, node, site, tier, pathKind string
	if rec.ev != nil {
		endpoint, node, site, tier, pathKind = rec.ev.ep.Meta.Name, rec.ev.ep.Spec.Node, rec.ev.site, rec.ev.tier.String(), o.a.pathKind(rec.ev)
	} else if rec.side == sideServer {
		endpoint, node, site = rec.endpoint, o.a.cfg.Node.Name, o.a.cfg.Node.Site
	}
	errText := ""
	if err != nil {
		errText = err.Error()
	}
	if rec.traced {
		s := &tracing.Span{Context: rec.sc, Parent: rec.parent, Name: rec.method + " " + rec.svc, Start: rec.start, End: now,
			Attrs: make([]tracing.Attr, 0, 16)}
		s.Kind = tracing.KindClient
		if rec.side == sideServer {
			s.Kind = tracing.KindServer
		}
		add := func(k, v string) {
			if v != "" {
				s.Attrs = append(s.Attrs, tracing.String(k, v))
			}
		}
		add("fogmesh.service", rec.svc)
		add("fogmesh.route", rec.route)
		add("fogmesh.endpoint", endpoint)
		add("fogmesh.endpoint.node", node)
		add("fogmesh.endpoint.site", site)
		add("fogmesh.tier", tier)
		add("fogmesh.path", pathKind)
		add("fogmesh.source_service", sourceService(rec.src))
		add("fogmesh.source_node", rec.srcNode)
		add("http.request.method", rec.method)
		add("url.path", pathOnly(rec.uri))
		add("rpc.grpc.status_code", grpcStatus)
		if rec.side == sideClient {
			s.Attrs = append(s.Attrs, tracing.Int("fogmesh.attempts", int64(rec.attempts)), tracing.Int("fogmesh.retries", int64(rec.retries)))
		}
		if status > 0 {
			s.Attrs = append(s.Attrs, tracing.Int("http.response.status_code", int64(status)))
		}
		// OpenTelemetry's HTTP conventions: 5xx (and no response) is an
		// error on both sides, 4xx on the client's only; so is a response
		// a panic cut after its head went out (l7panic.go).
		if status == 0 || status >= 500 || status >= 400 && rec.side == sideClient || grpcStatus != "" && grpcStatus != "0" || isPanicError(err) {
			s.Status, s.StatusMsg = tracing.StatusError, errText
		}
		o.exp.Export(s)
	}
	if rec.logged {
		r := accesslog.Record{Time: rec.start, Duration: now.Sub(rec.start), Side: rec.side, Method: rec.method, Authority: rec.host,
			Path: rec.uri, Protocol: rec.proto, Status: status, Error: errText, Service: rec.svc, Route: rec.route,
			Endpoint: endpoint, Node: node, Site: site, PathKind: pathKind, SourceService: sourceService(rec.src),
			SourceNode: rec.srcNode, Client: rec.client, UserAgent: rec.ua, Attempts: rec.attempts, Masked: rec.masked}
		if rec.sc.TraceID.IsValid() {
			r.TraceID = rec.sc.TraceID.String()
		}
		o.log.Log(&r)
	}
}

func pathOnly(uri string) string {
	if i := strings.IndexByte(uri, '?'); i >= 0 {
		return uri[:i]
	}
	return uri
}

// endOnBody finishes rec when resp's body is done (read to its end,
// failed, or closed); an upgraded or bodyless response finishes it now.
func (rec *reqObs) endOnBody(resp *http.Response) {
	grpc := strings.HasPrefix(httpproxy.ResponseField(resp, "Content-Type"), "application/grpc")
	if resp.StatusCode == http.StatusSwitchingProtocols || resp.Body == nil || resp.Body == http.NoBody {
		rec.end(resp.StatusCode, grpcStatusOf(resp, grpc), nil)
		return
	}
	resp.Body = &obsBody{ReadCloser: resp.Body, rec: rec, resp: resp, grpc: grpc}
}

func grpcStatusOf(resp *http.Response, grpc bool) string {
	if !grpc {
		return ""
	}
	if s := resp.Trailer.Get("Grpc-Status"); s != "" {
		return s
	}
	return httpproxy.ResponseField(resp, "Grpc-Status")
}

// obsBody ends its request's record when the body is done. It forwards
// BufferedUpstream, so the fast path still writes a buffered response in
// one go.
type obsBody struct {
	io.ReadCloser
	rec  *reqObs
	resp *http.Response
	grpc bool
}

func (b *obsBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil {
		var bpe *httpproxy.BodyPanicError
		if err == io.EOF {
			b.rec.end(b.resp.StatusCode, grpcStatusOf(b.resp, b.grpc), nil)
		} else if errors.As(err, &bpe) {
			// The request body's read panicked beside the answer (the
			// pool's sendRest; its OnPanic logged and counted it): a
			// panic after the head (l7panic.go).
			b.rec.end(b.resp.StatusCode, grpcStatusOf(b.resp, b.grpc), panicError{bpe.Value})
		} else {
			b.rec.end(b.resp.StatusCode, grpcStatusOf(b.resp, b.grpc), fmt.Errorf("response body: %w", err))
		}
	}
	return n, err
}

func (b *obsBody) Close() error {
	err := b.ReadCloser.Close()
	b.rec.end(b.resp.StatusCode, grpcStatusOf(b.resp, b.grpc), nil)
	return err
}

func (b *obsBody) BufferedUpstream() int {
	if ub, ok := b.ReadCloser.(httpproxy.UpstreamBuffered); ok {
		return ub.BufferedUpstream()
	}
	return 0
}

// statusWriter remembers the status a handler answered with. Unwrap
// keeps http.ResponseController (flush, hijack, deadlines) working.
type statusWriter struct {
	http.ResponseWriter
	status int
	// start, when set, is when the request came; header is when the
	// status was set (headerAfter).
	start, header time.Time
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		w.status = code
		if !w.start.IsZero() {
			w.header = time.Now()
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(p)
}

// headerAfter is the time from start to the response header, as the
// client side measures a request (until now if none was written).
func (w *statusWriter) headerAfter() time.Duration {
	if w.header.IsZero() {
		return time.Since(w.start)
	}
	return w.header.Sub(w.start)
}

func (w *statusWriter) Flush() { http.NewResponseController(w.ResponseWriter).Flush() }

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
