package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// WriteAddrFile writes the addresses a program bound, as one JSON object
// (name → host:port), to path, atomically: a reader sees the whole file or
// none. Programs take -addr-file so that whoever starts them (tests,
// supervisors) can bind port 0 and learn the ports the kernel chose, instead
// of guessing a free port and racing other programs for it.
func WriteAddrFile(path string, addrs map[string]string) error {
	if path == "" {
		return nil
	}
	b, err := json.MarshalIndent(addrs, "", "  ")
	if err != nil {
		return fmt.Errorf("addr-file: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".addr-*")
	if err != nil {
		return fmt.Errorf("addr-file: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("addr-file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("addr-file: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("addr-file: %w", err)
	}
	return nil
}
