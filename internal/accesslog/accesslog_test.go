package accesslog

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/VictoriaMetrics/metrics"
)

func record(i int) *Record {
	return &Record{Time: time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC), Duration: 1500 * time.Microsecond, Side: "client",
		Method: "GET", Authority: "hello.demo.mesh", Path: fmt.Sprintf("/users/42?email=a@b.c&i=%d", i), Protocol: "HTTP/1.1",
		Status: 200, Service: "demo/hello", Route: "api", Endpoint: "hello-1", Node: "n1", Site: "s1", PathKind: "same_site",
		SourceService: "demo/client", Client: "127.0.0.1:5555", UserAgent: "curl/8", Attempts: 2, TraceID: "4bf92f3577b34da6a3ce929d0e0e4736"}
}

func readLines(t *testing.T, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %q is not JSON: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

// TestLines: every field as configured, masked records without personal
// data, and a chosen subset of fields.
func TestLines(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "access.log")
	set := metrics.NewSet()
	l, err := New(Config{Path: path, Metrics: set})
	if err != nil {
		t.Fatal(err)
	}
	l.Log(record(1))
	m := record(2)
	m.Masked = true
	l.Log(m)
	l.Close()
	lines := readLines(t, path)
	if len(lines) != 2 {
		t.Fatalf("%d lines", len(lines))
	}
	want := map[string]any{"time": "2026-12-03T10:00:00Z", "duration_ms": 1.5, "side": "client", "method": "GET",
		"authority": "hello.demo.mesh", "path": "/users/42?email=a@b.c&i=1", "protocol": "HTTP/1.1", "status": 200.0, "error": "",
		"service": "demo/hello", "route": "api", "endpoint": "hello-1", "node": "n1", "site": "s1", "path_kind": "same_site",
		"source_service": "demo/client", "source_node": "", "client": "127.0.0.1:5555", "user_agent": "curl/8", "attempts": 2.0,
		"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "masked": false}
	if fmt.Sprint(lines[0]) != fmt.Sprint(want) {
		t.Fatalf("line\n%v\nwant\n%v", lines[0], want)
	}
	for _, k := range []string{"path", "client", "user_agent"} {
		if _, ok := lines[1][k]; ok {
			t.Errorf("masked line carries %s: %v", k, lines[1])
		}
	}
	if lines[1]["masked"] != true || lines[1]["service"] != "demo/hello" {
		t.Errorf("masked line %v", lines[1])
	}
	if n := set.GetOrCreateCounter("fogmesh_access_log_lines_total").Get(); n != 2 {
		t.Errorf("lines_total %d", n)
	}

	// A subset, in the order given by Fields.
	path2 := filepath.Join(dir, "small.log")
	l, err = New(Config{Path: path2, Fields: []string{"status", "service", "path"}})
	if err != nil {
		t.Fatal(err)
	}
	l.Log(record(3))
	l.Close()
	b, _ := os.ReadFile(path2)
	if got := string(b); got != `{"status":200,"service":"demo/hello","path":"/users/42?email=a@b.c&i=3"}`+"\n" {
		t.Fatalf("subset line %q", got)
	}

	if _, err := New(Config{Path: path2, Fields: []string{"status", "password"}}); err == nil || !strings.Contains(err.Error(), `unknown field "password"`) {
		t.Fatalf("unknown field: %v", err)
	}
	if _, err := New(Config{Path: filepath.Join(dir, "no", "such", "dir.log")}); err == nil {
		t.Fatal("an unwritable path was accepted")
	}
}

// TestRotation: past MaxSize the file moves to .1, .1 to .2, and only
// MaxFiles old files stay; no line is lost or split.
func TestRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "access.log")
	l, err := New(Config{Path: path, MaxSize: 2000, MaxFiles: 2, Fields: []string{"path"}})
	if err != nil {
		t.Fatal(err)
	}
	const n = 200 // ~40 bytes a line: 8000 bytes, four 2000-byte files
	for i := range n {
		r := record(i)
		l.Log(r)
	}
	l.Close()
	var total int
	for _, name := range []string{"access.log", "access.log.1", "access.log.2"} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if st.Size() > 2000 {
			t.Errorf("%s is %d bytes, over MaxSize", name, st.Size())
		}
		total += len(readLines(t, filepath.Join(dir, name)))
	}
	if _, err := os.Stat(filepath.Join(dir, "access.log.3")); err == nil {
		t.Error("access.log.3 kept beyond MaxFiles")
	}
	// The newest lines are in access.log, the last one last.
	cur := readLines(t, path)
	if cur[len(cur)-1]["path"] != fmt.Sprintf("/users/42?email=a@b.c&i=%d", n-1) {
		t.Errorf("last line %v", cur[len(cur)-1])
	}
	if total >= n || total < 90 { // two full files at least
		t.Errorf("%d lines kept in 3 files", total)
	}
}

// TestQueueFull: a full queue drops lines (counted); Log never blocks.
func TestQueueFull(t *testing.T) {
	set := metrics.NewSet()
	l, err := New(Config{Path: filepath.Join(t.TempDir(), "a.log"), QueueSize: 1, Metrics: set})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2000 {
		l.Log(record(i))
	}
	l.Close()
	written := set.GetOrCreateCounter("fogmesh_access_log_lines_total").Get()
	dropped := set.GetOrCreateCounter(`fogmesh_access_log_dropped_total{reason="queue_full"}`).Get()
	if written+dropped != 2000 || dropped == 0 {
		t.Fatalf("written %d + dropped %d, want 2000 with drops", written, dropped)
	}
}

// FuzzAppendString: whatever a client sends, the line stays one valid
// JSON line, and valid UTF-8 round-trips.
func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"", "plain", "quote\"back\\slash", "new\nline\r\t", "\x00\x1f\x7f", "\xff\xfe", "é€😀", "\u2028\u2029"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b := appendString(nil, s)
		if strings.ContainsAny(string(b), "\n\r") {
			t.Fatalf("%q: raw newline in %q", s, b)
		}
		var got string
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("%q: %q is not a JSON string: %v", s, b, err)
		}
		if utf8.ValidString(s) && got != s {
			t.Fatalf("%q round-tripped to %q", s, got)
		}
	})
}

// TestHugeValuesBounded: a client's path, Host and User-Agent may each be
// about a megabyte (the header limit); a line carried them whole, so the
// queue (QueueSize lines) could hold gigabytes while the disk is slow.
// Each value is cut at MaxValueLen, on a rune boundary, and says so.
func TestHugeValuesBounded(t *testing.T) {
	l := &Logger{}
	var err error
	if l.fields, err = CheckFields(nil); err != nil {
		t.Fatal(err)
	}
	r := record(1)
	big := strings.Repeat("é", 1<<19) // 1 MiB of two-byte runes
	r.Path, r.Authority, r.UserAgent, r.Error, r.Method = "/"+big, big, "\n"+big, big, big
	b := l.Append(nil, r)
	if len(b) > 8*(MaxValueLen+64)+1024 {
		t.Fatalf("line of %d bytes", len(b))
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil || b[len(b)-1] != '\n' {
		t.Fatalf("line is not one JSON object: %v", err)
	}
	for _, f := range []string{"path", "authority", "user_agent", "error", "method"} {
		s, _ := m[f].(string)
		if !utf8.ValidString(s) || !strings.HasSuffix(s, truncMark) || len(s) > MaxValueLen+len(truncMark) {
			t.Errorf("%s: %d bytes, ends %q", f, len(s), s[max(0, len(s)-20):])
		}
	}
}

// TestQueueBytesBounded: the queue was bounded in lines only, so behind a
// stalled disk (or a full one, an NFS mount gone away) QueueSize lines of
// clients' longest values stayed in memory: 4096 lines of 16 KiB are 64
// MiB, a quarter of the agent's memory limit in deploy/agent.yaml. The
// queued bytes are bounded too (QueueBytes), past which lines are dropped
// and counted as queue_full.
func TestQueueBytesBounded(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("a FIFO stands for the stalled disk")
	}
	path := filepath.Join(t.TempDir(), "stalled")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	// A reader that never reads: writes stall once the pipe is full.
	rd, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	set := metrics.NewSet()
	l, err := New(Config{Path: path, MaxSize: 1 << 40, QueueBytes: 4 << 20, Metrics: set})
	if err != nil {
		t.Fatal(err)
	}
	r := record(1)
	long := strings.Repeat("a", MaxValueLen)
	r.Path, r.Authority, r.UserAgent, r.Error = "/"+long, long, long, long
	line := len(l.Append(nil, r))
	for range 4096 {
		l.Log(r)
	}
	dropped := set.GetOrCreateCounter(`fogmesh_access_log_dropped_total{reason="queue_full"}`).Get()
	// What may be queued: QueueBytes, plus what the writer took (its
	// 64 KiB buffer and the pipe's).
	if kept := (4096 - int(dropped)) * line; kept > 4<<20+1<<20 {
		t.Errorf("%d lines of %d bytes (%d MiB) held behind a stalled disk, %d dropped", 4096-dropped, line, kept>>20, dropped)
	}
	rd.Close() // the writer's next write fails: Close returns
	l.Close()
}
