package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadJoinTokenFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name, path, want, err string
	}{
		{name: "token with newline", path: write("n1", "fmj1.abc.def.0123\n"), want: "fmj1.abc.def.0123"},
		{name: "missing file is no token", path: filepath.Join(dir, "absent")},
		{name: "two lines", path: write("n2", "a\nb\n"), err: "not a token"},
		{name: "too long", path: write("n3", strings.Repeat("x", 5000)), err: "not a token"},
		{name: "a directory", path: dir, err: "join-token-file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := readJoinTokenFile(tc.path)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}
