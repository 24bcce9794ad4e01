package memtrim

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

func TestCodeSpans(t *testing.T) {
	smaps := `00400000-00b46000 r-xp 00000000 fe:00 10461657 /bin/fogmesh-agent
Rss:                3840 kB
Anonymous:             0 kB
00b46000-01321000 r--p 00746000 fe:00 10461657 /bin/fogmesh-agent
Anonymous:             0 kB
01321000-01399000 rw-p 00f21000 fe:00 10461657 /bin/fogmesh-agent
Anonymous:           128 kB
01399000-013a0000 r--p 00f99000 fe:00 10461657 /bin/fogmesh-agent
Anonymous:             8 kB
013a0000-013a8000 r--p 00fa0000 fe:00 10461657 /bin/fogmesh-agent
Anonymous:             0 kB
Swap:                 28 kB
013a8000-013b0000 r--s 00fa8000 fe:00 10461657 /bin/fogmesh-agent
Anonymous:             0 kB
c000000000-c000400000 rw-p 00000000 00:00 0
Anonymous:          4096 kB
7f0000000000-7f0000001000 r--p 00000000 fe:00 99 /lib/x.so
Anonymous:             0 kB
7f0000001000-7f0000002000 r-xp 00000000 fe:01 10461657 /other/fs/same-inode
Anonymous:             0 kB
zz-01 r--p 0 fe:00 10461657 /bin/fogmesh-agent
00b46000-00400000 r--p 00746000 fe:00 10461657 /bin/fogmesh-agent
00400000-00b46000 r-xp
`
	maps, err := readMappings(strings.NewReader(smaps))
	if err != nil {
		t.Fatal(err)
	}
	if len(maps) != 9 {
		t.Fatalf("parsed %d mappings, want 9 (three bad lines skipped): %+v", len(maps), maps)
	}
	// From the executable's code: its code and read-only data, not its
	// data, not its relocated read-only data (written: resident, or
	// swapped out), not a shared mapping, not another device's file with
	// the same inode.
	got := codeSpans(maps, 0x400123)
	want := []mapping{
		{start: 0x400000, end: 0xb46000, perms: "r-xp", file: "fe:00 10461657"},
		{start: 0xb46000, end: 0x1321000, perms: "r--p", file: "fe:00 10461657"},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("codeSpans = %+v, want %+v", got, want)
	}
	// A pc in anonymous memory, or nowhere: nothing.
	if got := codeSpans(maps, 0xc000000100); got != nil {
		t.Errorf("from anonymous memory: %+v", got)
	}
	if got := codeSpans(maps, 0x10); got != nil {
		t.Errorf("from an unmapped pc: %+v", got)
	}
}

// exeFile is the device and inode of the file this test's code runs from,
// as /proc/self/smaps names them.
func exeFile(t *testing.T) string {
	t.Helper()
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Skipf("no smaps: %v", err)
	}
	defer f.Close()
	maps, err := readMappings(f)
	if err != nil {
		t.Fatal(err)
	}
	pc, _, _, _ := runtime.Caller(0)
	for _, m := range maps {
		if m.start <= uintptr(pc) && uintptr(pc) < m.end && m.file != "" {
			return m.file
		}
	}
	t.Fatal("no file mapping holds this test's code")
	return ""
}

// exeRSS is the kilobytes of the executable's read-only mappings that are
// resident (the Rss lines of their entries in /proc/self/smaps), and of
// those the process's own copies (Anonymous: relocated data in a PIE).
func exeRSS(t *testing.T) (rss, anon int64) {
	t.Helper()
	exe := exeFile(t)
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
		m, ok := parseMapping(line) // a mapping's header line
		in = ok && m.file == exe && (m.perms == "r-xp" || m.perms == "r--p")
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return rss, anon
}

// present reports whether the page holding addr is mapped in this process
// (bit 63 of its /proc/self/pagemap entry).
func present(t *testing.T, addr uintptr) bool {
	t.Helper()
	f, err := os.Open("/proc/self/pagemap")
	if err != nil {
		t.Skipf("no pagemap: %v", err)
	}
	defer f.Close()
	var e [8]byte
	if _, err := f.ReadAt(e[:], int64(addr/uintptr(os.Getpagesize()))*8); err != nil {
		t.Fatal(err)
	}
	return binary.LittleEndian.Uint64(e[:])>>63 == 1
}

// TestReleaseCodeUnmapsFilePages: code that ran before ReleaseCode and not
// after is no longer mapped (checked page by page in /proc/self/pagemap:
// the RSS of the whole binary also counts what the check itself maps back,
// 64 KiB around each fault), the program goes on running, and read-only
// pages the process wrote are kept.
func TestReleaseCodeUnmapsFilePages(t *testing.T) {
	// Code the rest of the test never runs again: regexp's and JSON's.
	re := regexp.MustCompile(`^a+(b|c)*d?$`)
	if !re.MatchString("aaabcbd") || re.ReplaceAllString("aab", "x") != "x" {
		t.Fatal("regexp")
	}
	if b, err := json.MarshalIndent(map[string][]int{"a": {1, 2}}, "", " "); err != nil || !json.Valid(b) {
		t.Fatal("json")
	}
	fns := []any{regexp.MustCompile, (*regexp.Regexp).MatchString, (*regexp.Regexp).ReplaceAllString,
		json.MarshalIndent, json.Valid}
	pcs := make([]uintptr, len(fns))
	for i, fn := range fns {
		pcs[i] = reflect.ValueOf(fn).Pointer()
		if !present(t, pcs[i]) {
			t.Fatalf("function %d's page is not mapped right after it ran", i)
		}
	}
	before, anonBefore := exeRSS(t)
	n, err := ReleaseCode()
	if err != nil {
		t.Fatal(err)
	}
	gone := 0
	for _, pc := range pcs {
		if !present(t, pc) {
			gone++
		}
	}
	after, anonAfter := exeRSS(t)
	t.Logf("covered %d KiB; %d of %d functions' pages unmapped; RSS of the executable %d -> %d KiB, its own copies %d -> %d KiB",
		n>>10, gone, len(pcs), before, after, anonBefore, anonAfter)
	if n < 1<<20 {
		t.Fatalf("covered %d bytes of the executable, want its code (megabytes)", n)
	}
	if gone == 0 {
		t.Fatalf("none of %d functions that ran before ReleaseCode had its page unmapped", len(pcs))
	}
	// Relocated read-only data (make test runs this in a PIE, where it
	// exists) holds the process's writes: it must not be dropped.
	if anonAfter != anonBefore {
		t.Fatalf("the process's copies of read-only pages went %d -> %d KiB: written pages dropped", anonBefore, anonAfter)
	}
}
