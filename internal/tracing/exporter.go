package tracing

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/VictoriaMetrics/metrics"
)

// Protocols of ExporterConfig.Protocol.
const (
	ProtocolHTTP = "http/protobuf"
	ProtocolGRPC = "grpc"
)

// ExporterConfig configures an Exporter. Zero values take the defaults in
// comments.
type ExporterConfig struct {
	// Endpoint is the collector. http/protobuf: a URL; one without a path
	// gets /v1/traces (http://collector:4318 → http://collector:4318/v1/traces).
	// grpc: host:port (cleartext HTTP/2) or an http:// or https:// URL.
	Endpoint string
	// Protocol is http/protobuf (default) or grpc.
	Protocol string
	// QueueSize bounds the spans waiting for export (default 2048); a span
	// that finds the queue full is dropped and counted.
	QueueSize int
	// QueueBytes bounds the queued spans' strings (default 8 MiB): with
	// the collector away, QueueSize spans of clients' longest values
	// (MaxValueLen each, the tracestate up to 8 KiB) would take far more.
	QueueBytes int64
	// BatchSize is the most spans per export request (default 512).
	BatchSize int
	// Interval is the longest a span waits for its batch (default 1s).
	Interval time.Duration
	// Timeout bounds one export request (default 5s). A failed export's
	// spans are dropped and counted: a site cut off from its collector
	// holds no spans beyond the queue.
	Timeout time.Duration
	// Resource attributes of every span (service.name, host.name, …).
	Resource []Attr
	// Metrics receives fogmesh_trace_spans_exported_total and
	// fogmesh_trace_spans_dropped_total{reason} (default: a private set).
	Metrics *metrics.Set
	// Logger (default: discard).
	Logger *slog.Logger
	// Client sends the requests (default: one made for the protocol).
	Client *http.Client
}

// Reasons a span is dropped (fogmesh_trace_spans_dropped_total{reason}).
const (
	DropQueueFull    = "queue_full"    // the queue was full: the collector is slow or away
	DropExportFailed = "export_failed" // the collector refused the batch or could not be reached
	DropShutdown     = "shutdown"      // still queued when the agent stopped
)

// Exporter sends spans to an OTLP collector in batches from one goroutine.
// Export never blocks: the queue is bounded and a span that does not fit
// is dropped and counted.
type Exporter struct {
	cfg      ExporterConfig
	url      string
	grpc     bool
	ch       chan *Span
	stop     chan struct{}
	done     chan struct{}
	once     sync.Once
	exported *metrics.Counter
	queued   atomic.Int64 // spanBytes of the spans in ch
	dropped  map[string]*metrics.Counter
}

func (c *ExporterConfig) validate() error {
	if c.Endpoint == "" {
		return errors.New("tracing: no collector endpoint")
	}
	switch c.Protocol {
	case "", ProtocolHTTP, "http":
		c.Protocol = ProtocolHTTP
	case ProtocolGRPC:
	default:
		return fmt.Errorf("tracing: protocol %q: want %s or %s", c.Protocol, ProtocolHTTP, ProtocolGRPC)
	}
	if c.QueueSize <= 0 {
		c.QueueSize = 2048
	}
	if c.QueueBytes <= 0 {
		c.QueueBytes = 8 << 20
	}
	if c.BatchSize <= 0 {
		c.BatchSize = 512
	}
	if c.Interval <= 0 {
		c.Interval = time.Second
	}
	if c.Timeout <= 0 {
		c.Timeout = 5 * time.Second
	}
	if c.Metrics == nil {
		c.Metrics = metrics.NewSet()
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// CheckEndpoint reports whether endpoint and protocol are a usable
// collector address, as NewExporter would judge them.
func CheckEndpoint(endpoint, protocol string) error {
	c := ExporterConfig{Endpoint: endpoint, Protocol: protocol}
	if err := c.validate(); err != nil {
		return err
	}
	_, err := endpointURL(c.Endpoint, c.Protocol)
	return err
}

// endpointURL is the request URL of an endpoint.
func endpointURL(endpoint, protocol string) (string, error) {
	if protocol == ProtocolGRPC && !strings.Contains(endpoint, "://") {
		endpoint = "http://" + endpoint
	}
	if !strings.HasPrefix(endpoint, "http://") && !strings.HasPrefix(endpoint, "https://") {
		return "", fmt.Errorf("tracing: endpoint %q: want an http:// or https:// URL with a host", endpoint)
	}
	u, err := url.Parse(endpoint)
	if err == nil && (u.Scheme != "http" && u.Scheme != "https" || u.Host == "") {
		err = errors.New("want an http:// or https:// URL with a host")
	}
	if err != nil {
		return "", fmt.Errorf("tracing: endpoint %q: %w", endpoint, err)
	}
	switch {
	case protocol == ProtocolGRPC:
		u.Path = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
	case u.Path == "" || u.Path == "/":
		u.Path = "/v1/traces"
	}
	return u.String(), nil
}

// NewExporter checks cfg and starts the exporter's goroutine; Close stops it.
func NewExporter(cfg ExporterConfig) (*Exporter, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	u, err := endpointURL(cfg.Endpoint, cfg.Protocol)
	if err != nil {
		return nil, err
	}
	e := &Exporter{cfg: cfg, url: u, grpc: cfg.Protocol == ProtocolGRPC,
		ch: make(chan *Span, cfg.QueueSize), stop: make(chan struct{}), done: make(chan struct{}),
		exported: cfg.Metrics.GetOrCreateCounter(`fogmesh_trace_spans_exported_total`),
		dropped:  map[string]*metrics.Counter{}}
	for _, r := range []string{DropQueueFull, DropExportFailed, DropShutdown} {
		e.dropped[r] = cfg.Metrics.GetOrCreateCounter(`fogmesh_trace_spans_dropped_total{reason="` + r + `"}`)
	}
	if e.cfg.Client == nil {
		var protos http.Protocols
		if e.grpc {
			protos.SetUnencryptedHTTP2(true) // h2c with prior knowledge, as gRPC does
			protos.SetHTTP2(true)
		} else {
			protos.SetHTTP1(true)
			protos.SetHTTP2(true)
		}
		e.cfg.Client = &http.Client{Transport: &http.Transport{Protocols: &protos, MaxIdleConnsPerHost: 2,
			IdleConnTimeout: 90 * time.Second, TLSHandshakeTimeout: cfg.Timeout, ResponseHeaderTimeout: cfg.Timeout}}
	}
	go e.run()
	return e, nil
}

// Export queues s, or drops it (counted) if the queue is full (in spans
// or bytes, QueueBytes). It never blocks.
func (e *Exporter) Export(s *Span) {
	s.Name, s.StatusMsg, s.Context.State = cut(s.Name), cut(s.StatusMsg), validUTF8(s.Context.State)
	for i := range s.Attrs {
		s.Attrs[i].Str = cut(s.Attrs[i].Str)
	}
	n := spanBytes(s)
	if e.queued.Add(n) > e.cfg.QueueBytes {
		e.queued.Add(-n)
		e.dropped[DropQueueFull].Inc()
		return
	}
	select {
	case e.ch <- s:
	default:
		e.queued.Add(-n)
		e.dropped[DropQueueFull].Inc()
	}
}

// spanBytes is about what s holds in memory (QueueBytes).
func spanBytes(s *Span) int64 {
	n := 256 + len(s.Name) + len(s.StatusMsg) + len(s.Context.State)
	for _, a := range s.Attrs {
		n += 48 + len(a.Key) + len(a.Str)
	}
	return int64(n)
}

// MaxValueLen bounds a span's name, status message and string
// attributes (bytes): a client's path or method may be as long as the
// header limit (a megabyte), and QueueSize spans of that would take
// gigabytes while the collector is away. A longer value is cut on a rune
// boundary and ends with "...".
const MaxValueLen = 4096

// validUTF8 makes s valid UTF-8, as OTLP's protobuf strings must be: a
// collector that checks refuses the whole batch otherwise, and a client's
// tracestate or method may carry any byte (invalid ones become U+FFFD).
// The tracestate is bounded already (maxTracestate) and exported whole.
func validUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

// cut bounds s (MaxValueLen) and makes it valid UTF-8.
func cut(s string) string {
	s = validUTF8(s)
	if len(s) <= MaxValueLen {
		return s
	}
	n := MaxValueLen - 3
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "..."
}

// Close sends what is queued (bounded by the export timeout), then stops.
// It is idempotent and waits.
func (e *Exporter) Close() {
	e.once.Do(func() { close(e.stop) })
	<-e.done
}

func (e *Exporter) run() {
	defer close(e.done)
	t := time.NewTicker(e.cfg.Interval)
	defer t.Stop()
	batch := make([]*Span, 0, e.cfg.BatchSize)
	var buf []byte
	flush := func(ctx context.Context) {
		if len(batch) == 0 {
			return
		}
		buf = AppendExportRequest(buf[:0], e.cfg.Resource, batch)
		if err := e.send(ctx, buf); err != nil {
			e.dropped[DropExportFailed].Add(len(batch))
			e.cfg.Logger.Debug("tracing: export failed; spans dropped", "spans", len(batch), "err", err)
		} else {
			e.exported.Add(len(batch))
		}
		clear(batch)
		batch = batch[:0]
	}
	for {
		select {
		case s := <-e.ch:
			e.queued.Add(-spanBytes(s))
			batch = append(batch, s)
			if len(batch) >= e.cfg.BatchSize {
				flush(context.Background())
			}
		case <-t.C:
			flush(context.Background())
		case <-e.stop:
			ctx, cancel := context.WithTimeout(context.Background(), e.cfg.Timeout)
			defer cancel()
		drain:
			for {
				select {
				case s := <-e.ch:
					e.queued.Add(-spanBytes(s))
					batch = append(batch, s)
					if len(batch) >= e.cfg.BatchSize {
						flush(ctx)
					}
				default:
					break drain
				}
			}
			if ctx.Err() == nil {
				flush(ctx)
			} else {
				e.dropped[DropShutdown].Add(len(batch))
			}
			return
		}
	}
}

// send posts one export request: OTLP/HTTP (protobuf body) or OTLP/gRPC
// (one length-prefixed message; the status is in the grpc-status trailer).
func (e *Exporter) send(ctx context.Context, msg []byte) error {
	ctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	defer cancel()
	body := msg
	if e.grpc {
		body = make([]byte, 5+len(msg))
		binary.BigEndian.PutUint32(body[1:5], uint32(len(msg)))
		copy(body[5:], msg)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	if e.grpc {
		req.Header.Set("Content-Type", "application/grpc")
		req.Header.Set("Te", "trailers")
	} else {
		req.Header.Set("Content-Type", "application/x-protobuf")
	}
	resp, err := e.cfg.Client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	// The answer (an ExportTraceServiceResponse, maybe with partial
	// success) is read to the end so the connection is reused, and bounded.
	_, rerr := io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("collector answered %s", resp.Status)
	}
	if e.grpc {
		if rerr != nil {
			return rerr
		}
		st := resp.Trailer.Get("Grpc-Status")
		if st == "" {
			st = resp.Header.Get("Grpc-Status") // trailers-only
		}
		if st != "0" {
			return fmt.Errorf("collector answered grpc-status %q: %s", st, resp.Trailer.Get("Grpc-Message"))
		}
	}
	return nil
}
