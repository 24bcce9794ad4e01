package memtrim

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

func TestExeReadOnlySpan(t *testing.T) {
	const ino = 10461657
	for _, tc := range []struct {
		line       string
		start, end uintptr
		ok         bool
	}{
		{"00400000-00b46000 r-xp 00000000 fe:00 10461657 /bin/fogmesh-agent", 0x400000, 0xb46000, true},
		{"00b46000-01321000 r--p 00746000 fe:00 10461657 /bin/fogmesh-agent", 0xb46000, 0x1321000, true},
		// The binary's data: written by the program, never dropped.
		{"01321000-01399000 rw-p 00f21000 fe:00 10461657 /bin/fogmesh-agent", 0, 0, false},
		// Another file, a shared mapping, anonymous memory, bad lines.
		{"7f0000000000-7f0000001000 r--p 00000000 fe:00 99 /lib/x.so", 0, 0, false},
		{"00400000-00b46000 r--s 00000000 fe:00 10461657 /bin/fogmesh-agent", 0, 0, false},
		{"c000000000-c000400000 rw-p 00000000 00:00 0", 0, 0, false},
		{"00b46000-00400000 r--p 00746000 fe:00 10461657 /bin/fogmesh-agent", 0, 0, false},
		{"zz-01 r--p 0 fe:00 10461657 /bin/fogmesh-agent", 0, 0, false},
		{"00400000-00b46000 r-xp", 0, 0, false},
		{"", 0, 0, false},
	} {
		s, e, ok := exeReadOnlySpan(tc.line, ino)
		if ok != tc.ok || s != tc.start || e != tc.end {
			t.Errorf("%q: %#x-%#x %v, want %#x-%#x %v", tc.line, s, e, ok, tc.start, tc.end, tc.ok)
		}
	}
}

// exeRSS is the kilobytes of the executable's read-only mappings that are
// resident (the Rss lines of their entries in /proc/self/smaps), and of
// those the process's own copies (Anonymous: relocated data in a PIE).
func exeRSS(t *testing.T) (rss, anon int64) {
	t.Helper()
	var exe syscall.Stat_t
	if err := syscall.Stat("/proc/self/exe", &exe); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Skipf("no smaps: %v", err)
	}
	defer f.Close()
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if k, v, ok := strings.Cut(line, ":"); ok && !strings.Contains(k, " ") {
			if in && (k == "Rss" || k == "Anonymous") {
				n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				if err != nil {
					t.Fatalf("smaps: %q: %v", line, err)
				}
				if k == "Rss" {
					rss += n
				} else {
					anon += n
				}
			}
			continue
		}
		_, _, in = exeReadOnlySpan(line, exe.Ino) // a mapping's header line
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return rss, anon
}

// TestReleaseCodeUnmapsFilePages: the test binary's code and read-only
// data that ran so far are unmapped (the RSS of the executable falls by most of
// them), and the program goes on running: what it touches next is mapped
// again.
func TestReleaseCodeUnmapsFilePages(t *testing.T) {
	before, anonBefore := exeRSS(t)
	n, err := ReleaseCode()
	if err != nil {
		t.Fatal(err)
	}
	after, anonAfter := exeRSS(t)
	t.Logf("covered %d KiB; RSS of the executable %d -> %d KiB, its own copies %d -> %d KiB", n>>10, before, after, anonBefore, anonAfter)
	if n < 1<<20 {
		t.Fatalf("covered %d bytes of the executable, want its code (megabytes)", n)
	}
	if after >= before-(before/4) {
		t.Fatalf("RSS of the executable %d -> %d KiB: not released", before, after)
	}
	// Relocated read-only data (make test runs this in a PIE, where it
	// exists) holds the process's writes: it must not be dropped.
	if anonAfter != anonBefore {
		t.Fatalf("the process's copies of read-only pages went %d -> %d KiB: written pages dropped", anonBefore, anonAfter)
	}
}
