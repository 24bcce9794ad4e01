package audit

import (
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"
)

func newTextLogger(w io.Writer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }

// openLogStalled opens a log with a one-record buffer whose writer blocks
// before its first write until stall is closed.
func openLogStalled(t *testing.T, dir string, stall chan struct{}, once *sync.Once) *Log {
	t.Helper()
	cfg := Config{Dir: dir, Node: "edge-1", Buffer: 1, BlockFor: 30 * time.Millisecond}
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	seg, _, err := openSegments(cfg.Dir, cfg.Name, cfg.MaxFileBytes, 0, false)
	if err != nil {
		t.Fatal(err)
	}
	l := &Log{cfg: cfg, seg: seg, ch: make(chan item, cfg.Buffer), closing: make(chan struct{}), done: make(chan struct{}), hash: Genesis,
		stalled: make(chan struct{})}
	l.testHookWrite = func() {
		once.Do(func() { close(l.stalled) })
		<-stall
	}
	go l.run()
	t.Cleanup(func() {
		select {
		case <-stall:
		default:
			close(stall)
		}
		l.Close()
	})
	return l
}

func waitStalled(t *testing.T, l *Log) {
	select {
	case <-l.stalled:
	case <-time.After(5 * time.Second):
		t.Fatal("writer never stalled")
	}
}
