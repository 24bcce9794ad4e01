package main

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestReadmeLayout keeps README's layout table in step with the tree (issue
// 10): every package under internal/ has a row, and every row names a
// package that exists.
func TestReadmeLayout(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^\\| `([a-z0-9/]+)` \\|").FindAllStringSubmatch(string(readme), -1) {
		rows[m[1]] = true
	}
	pkgs := map[string]bool{}
	err = filepath.WalkDir("../../internal", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		rel, err := filepath.Rel("../../internal", filepath.Dir(path))
		if err == nil && !strings.Contains(rel, "testdata") {
			pkgs[filepath.ToSlash(rel)] = true
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(pkgs) < 10 {
		t.Fatalf("found only %d packages under internal/: the walk is broken", len(pkgs))
	}
	for p := range pkgs {
		if !rows[p] {
			t.Errorf("internal/%s has no row in README's layout table", p)
		}
	}
	for r := range rows {
		if !pkgs[r] {
			t.Errorf("README's layout table has a row for %s, which is no package under internal/", r)
		}
	}
}
