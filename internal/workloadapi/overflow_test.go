package workloadapi

import (
	"os"
	"path/filepath"
	"testing"
)

// TestReadOverflow: the overflow ids come from the sysctl files, each
// falling back to the kernel's default, 65534, when missing or garbled;
// a Caller with them has no uid or gid.
func TestReadOverflow(t *testing.T) {
	proc := func(files map[string]string) string {
		root := t.TempDir()
		os.MkdirAll(filepath.Join(root, "sys", "kernel"), 0o755)
		for name, v := range files {
			if err := os.WriteFile(filepath.Join(root, "sys", "kernel", name), []byte(v), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return root
	}
	for _, c := range []struct {
		name  string
		files map[string]string
		want  OverflowIDs
	}{
		{"set", map[string]string{"overflowuid": "4000\n", "overflowgid": "4001\n"}, OverflowIDs{4000, 4001}},
		{"missing", nil, OverflowIDs{65534, 65534}},
		{"garbled gid", map[string]string{"overflowuid": "70000\n", "overflowgid": "x\n"}, OverflowIDs{70000, 65534}},
	} {
		if got := readOverflow(proc(c.files)); got != c.want {
			t.Errorf("%s: %+v, want %+v", c.name, got, c.want)
		}
	}
	ov := Overflow()
	for _, c := range []struct {
		name         string
		c            Caller
		uidOK, gidOK bool
	}{
		{"mapped", Caller{UID: 1000, GID: 1000, Known: true}, true, true},
		{"root", Caller{Known: true}, true, true},
		{"unmapped uid", Caller{UID: int32(ov.UID), GID: 1000, Known: true}, false, true},
		{"unmapped gid", Caller{UID: 1000, GID: int32(ov.GID), Known: true}, true, false},
		{"unknown credentials", Caller{UID: 1000, GID: 1000}, false, false},
	} {
		if c.c.HasUID() != c.uidOK || c.c.HasGID() != c.gidOK {
			t.Errorf("%s: HasUID %v, HasGID %v; want %v, %v", c.name, c.c.HasUID(), c.c.HasGID(), c.uidOK, c.gidOK)
		}
	}
}
