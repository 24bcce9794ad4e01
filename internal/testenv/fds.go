package testenv

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// OpenFilesUnder counts this process's open files whose path is under dir
// (from /proc/self/fd; the test is skipped where there is none): how tests
// see that a component keeps no file open between uses.
func OpenFilesUnder(t testing.TB, dir string) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	n := 0
	for _, e := range ents {
		p, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err == nil && strings.HasPrefix(p, dir+string(filepath.Separator)) {
			n++
		}
	}
	return n
}
