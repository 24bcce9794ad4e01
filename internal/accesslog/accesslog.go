// Package accesslog writes the agent's per-request access log: one JSON
// object per line, the fields an operator chose, into a file rotated by
// size (keeping a few old files). Writing happens on a goroutine of its
// own behind a bounded queue, so a slow disk drops lines (counted) instead
// of slowing requests.
package accesslog

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/VictoriaMetrics/metrics"
)

// Record is one request as an agent saw it. Which fields reach a line is
// Config.Fields'; a masked record never carries Path, Client or UserAgent.
type Record struct {
	Time          time.Time     // when the request arrived at this agent
	Duration      time.Duration // until its response ended (or failed)
	Side          string        // "client": the client's agent; "server": the endpoint's agent
	Method        string
	Authority     string // Host
	Path          string // path and query
	Protocol      string // HTTP/1.1, HTTP/2.0
	Status        int    // 0: no response
	Error         string // why there was no (good) response, if the agent knows
	Service       string // destination service (namespace/name)
	Route         string // route rule name
	Endpoint      string // the endpoint the last attempt went to
	Node, Site    string // the endpoint's node and site
	PathKind      string // same_node, same_site, same_region, cross_region, relayed
	SourceService string // the client's identity as namespace/account, or unknown
	SourceNode    string // the source agent's node (server side)
	Client        string // the client's address
	UserAgent     string
	Attempts      int    // attempts made (1 + retries + failovers)
	TraceID       string // the trace the request belongs to, if any
	Masked        bool   // personal data left out (Path, Client, UserAgent)
}

// Fields are the names a line may carry, in the order they are written.
var Fields = []string{"time", "duration_ms", "side", "method", "authority", "path", "protocol", "status", "error",
	"service", "route", "endpoint", "node", "site", "path_kind", "source_service", "source_node", "client",
	"user_agent", "attempts", "trace_id", "masked"}

// maskedFields are left out of a masked record's line, whatever Fields says.
var maskedFields = map[string]bool{"path": true, "client": true, "user_agent": true}

// Config configures a Logger. Zero values take the defaults in comments.
type Config struct {
	// Path is the log file. Required.
	Path string
	// Fields to write (default: all of Fields); an unknown name is an error.
	Fields []string
	// MaxSize is the size in bytes after which the file is rotated
	// (default 100 MiB): path becomes path.1, path.1 path.2, and so on.
	MaxSize int64
	// MaxFiles is how many rotated files are kept (default 5; older ones
	// are removed).
	MaxFiles int
	// QueueSize bounds the lines waiting to be written (default 4096).
	QueueSize int
	// QueueBytes bounds their bytes (default 16 MiB): behind a stalled
	// disk, QueueSize lines of clients' longest values would take far
	// more.
	QueueBytes int64
	// FlushInterval is the longest a written line stays in the buffer
	// (default 200ms).
	FlushInterval time.Duration
	// Metrics receives fogmesh_access_log_lines_total and
	// fogmesh_access_log_dropped_total{reason} (default: a private set).
	Metrics *metrics.Set
	Logger  *slog.Logger
}

// Reasons a line is dropped.
const (
	DropQueueFull  = "queue_full"
	DropWriteError = "write_error"
)

// Logger writes records.
type Logger struct {
	cfg     Config
	fields  []int // indexes into Fields
	ch      chan []byte
	done    chan struct{}
	once    sync.Once
	lines   *metrics.Counter
	dropped map[string]*metrics.Counter
	queued  atomic.Int64 // bytes in ch

	f    *os.File // the writer goroutine's
	w    *bufio.Writer
	size int64
}

func (c *Config) validate() ([]int, error) {
	if c.Path == "" {
		return nil, errors.New("accesslog: no path")
	}
	if c.MaxSize <= 0 {
		c.MaxSize = 100 << 20
	}
	if c.MaxFiles <= 0 {
		c.MaxFiles = 5
	}
	if c.QueueSize <= 0 {
		c.QueueSize = 4096
	}
	if c.QueueBytes <= 0 {
		c.QueueBytes = 16 << 20
	}
	if c.FlushInterval <= 0 {
		c.FlushInterval = 200 * time.Millisecond
	}
	if c.Metrics == nil {
		c.Metrics = metrics.NewSet()
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return CheckFields(c.Fields)
}

// CheckFields checks field names (empty: all) and returns their indexes
// into Fields.
func CheckFields(names []string) ([]int, error) {
	if len(names) == 0 {
		names = Fields
	}
	var idx []int
	for _, n := range names {
		i := indexOf(n)
		if i < 0 {
			return nil, fmt.Errorf("accesslog: unknown field %q; known: %v", n, Fields)
		}
		idx = append(idx, i)
	}
	return idx, nil
}

func indexOf(name string) int {
	for i, f := range Fields {
		if f == name {
			return i
		}
	}
	return -1
}

// New opens (appends to) the file and starts the writer; Close stops it.
func New(cfg Config) (*Logger, error) {
	idx, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	l := &Logger{cfg: cfg, fields: idx, ch: make(chan []byte, cfg.QueueSize), done: make(chan struct{}),
		lines: cfg.Metrics.GetOrCreateCounter(`fogmesh_access_log_lines_total`), dropped: map[string]*metrics.Counter{}}
	for _, r := range []string{DropQueueFull, DropWriteError} {
		l.dropped[r] = cfg.Metrics.GetOrCreateCounter(`fogmesh_access_log_dropped_total{reason="` + r + `"}`)
	}
	if err := l.open(); err != nil {
		return nil, err
	}
	go l.run()
	return l, nil
}

func (l *Logger) open() error {
	f, err := os.OpenFile(l.cfg.Path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("accesslog: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("accesslog: %w", err)
	}
	l.f, l.size = f, st.Size()
	if l.w == nil {
		l.w = bufio.NewWriterSize(f, 64<<10)
	} else {
		l.w.Reset(f)
	}
	return nil
}

// Log queues r's line; it never blocks (a full queue, in lines or bytes,
// drops the line, counted).
func (l *Logger) Log(r *Record) {
	b := l.Append(make([]byte, 0, 512), r)
	n := int64(len(b))
	if l.queued.Add(n) > l.cfg.QueueBytes {
		l.queued.Add(-n)
		l.dropped[DropQueueFull].Inc()
		return
	}
	select {
	case l.ch <- b:
	default:
		l.queued.Add(-n)
		l.dropped[DropQueueFull].Inc()
	}
}

// Close writes what is queued, closes the file and waits. Idempotent.
func (l *Logger) Close() {
	l.once.Do(func() { close(l.ch) })
	<-l.done
}

func (l *Logger) run() {
	defer close(l.done)
	defer func() {
		l.w.Flush()
		l.f.Close()
	}()
	// Lines reach the file when 64 KiB are buffered or FlushInterval
	// after the first unflushed one: a busy agent writes a few times a
	// second, not once per request (bench/bench.sh OBS=1: a write per
	// line cost a quarter of the agent's CPU per request).
	t := time.NewTimer(l.cfg.FlushInterval)
	t.Stop()
	pending := false
	for {
		select {
		case b, ok := <-l.ch:
			if !ok {
				return
			}
			l.queued.Add(-int64(len(b)))
			l.write(b)
			if !pending && l.w.Buffered() > 0 {
				pending = true
				t.Reset(l.cfg.FlushInterval)
			}
		case <-t.C:
			pending = false
			if err := l.w.Flush(); err != nil {
				l.cfg.Logger.Warn("accesslog: write failed", "path", l.cfg.Path, "err", err)
			}
		}
	}
}

func (l *Logger) write(b []byte) {
	if l.size > 0 && l.size+int64(len(b)) > l.cfg.MaxSize {
		if err := l.rotate(); err != nil {
			l.cfg.Logger.Warn("accesslog: rotation failed", "path", l.cfg.Path, "err", err)
		}
	}
	if l.f == nil {
		if err := l.open(); err != nil {
			l.dropped[DropWriteError].Inc()
			return
		}
	}
	if _, err := l.w.Write(b); err != nil {
		l.dropped[DropWriteError].Inc()
		return
	}
	l.size += int64(len(b))
	l.lines.Inc()
}

// rotate renames path.(n-1) to path.n … path to path.1, drops the oldest,
// and opens a new path.
func (l *Logger) rotate() error {
	l.w.Flush()
	l.f.Close()
	l.f = nil
	os.Remove(fmt.Sprintf("%s.%d", l.cfg.Path, l.cfg.MaxFiles))
	for i := l.cfg.MaxFiles - 1; i >= 1; i-- {
		os.Rename(fmt.Sprintf("%s.%d", l.cfg.Path, i), fmt.Sprintf("%s.%d", l.cfg.Path, i+1))
	}
	if err := os.Rename(l.cfg.Path, l.cfg.Path+".1"); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return l.open()
}

// Append appends r's JSON line (with its newline) to b.
func (l *Logger) Append(b []byte, r *Record) []byte {
	b = append(b, '{')
	first := true
	for _, i := range l.fields {
		name := Fields[i]
		if r.Masked && maskedFields[name] {
			continue
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		b = appendString(b, name)
		b = append(b, ':')
		switch name {
		case "time":
			b = append(b, '"')
			b = r.Time.UTC().AppendFormat(b, time.RFC3339Nano)
			b = append(b, '"')
		case "duration_ms":
			b = strconv.AppendFloat(b, float64(r.Duration.Microseconds())/1000, 'f', -1, 64)
		case "side":
			b = appendString(b, r.Side)
		case "method":
			b = appendString(b, r.Method)
		case "authority":
			b = appendString(b, r.Authority)
		case "path":
			b = appendString(b, r.Path)
		case "protocol":
			b = appendString(b, r.Protocol)
		case "status":
			b = strconv.AppendInt(b, int64(r.Status), 10)
		case "error":
			b = appendString(b, r.Error)
		case "service":
			b = appendString(b, r.Service)
		case "route":
			b = appendString(b, r.Route)
		case "endpoint":
			b = appendString(b, r.Endpoint)
		case "node":
			b = appendString(b, r.Node)
		case "site":
			b = appendString(b, r.Site)
		case "path_kind":
			b = appendString(b, r.PathKind)
		case "source_service":
			b = appendString(b, r.SourceService)
		case "source_node":
			b = appendString(b, r.SourceNode)
		case "client":
			b = appendString(b, r.Client)
		case "user_agent":
			b = appendString(b, r.UserAgent)
		case "attempts":
			b = strconv.AppendInt(b, int64(r.Attempts), 10)
		case "trace_id":
			b = appendString(b, r.TraceID)
		case "masked":
			b = strconv.AppendBool(b, r.Masked)
		}
	}
	return append(b, '}', '\n')
}

const hexDigits = "0123456789abcdef"

// MaxValueLen bounds a string value of a line (bytes of the value, before
// escaping): a client's path, Host or User-Agent may each be as long as
// the header limit (a megabyte), and QueueSize lines of that would take
// gigabytes while the disk is slow. A longer value is cut, on a rune
// boundary, and ends with truncMark.
const MaxValueLen = 4096

const truncMark = "...(truncated)"

// appendString appends s as a JSON string: control characters escaped,
// invalid UTF-8 replaced by U+FFFD (a client's bytes cannot break a line).
// A value longer than MaxValueLen is cut.
func appendString(b []byte, s string) []byte {
	mark := ""
	if len(s) > MaxValueLen {
		cut := MaxValueLen
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s, mark = s[:cut], truncMark
	}
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c < 0x20 || c == 0x7f:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, `\ufffd`...)
		} else if r == '\u2028' || r == '\u2029' {
			b = append(b, `\u202`...)
			b = append(b, hexDigits[r&0xf])
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	b = append(b, mark...)
	return append(b, '"')
}
