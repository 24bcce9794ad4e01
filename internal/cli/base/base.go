// Package base is the plumbing every fogmesh command shares (config files,
// logging flags, signals, exit codes, -addr-file) with no dependency on any
// part of fogmesh, so the lean binaries (fogmesh-relay) can use it without
// linking the agent that package cli carries.
package base

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"sigs.k8s.io/yaml"
)

// Exit codes.
const (
	ExitOK      = 0 // clean run or clean shutdown
	ExitFailure = 1 // runtime failure (a listener died, the server refused)
	ExitUsage   = 2 // bad flags, bad config file, bad input document
)

// UsageError marks errors that map to ExitUsage.
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

// Usagef returns a UsageError.
func Usagef(format string, args ...any) error {
	return &UsageError{Err: fmt.Errorf(format, args...)}
}

// ExitCode maps an error to an exit code and prints it.
func ExitCode(prog string, err error) int {
	if err == nil {
		return ExitOK
	}
	if errors.Is(err, flag.ErrHelp) {
		return ExitOK // -h/--help printed the usage, as Go's flag package exits 0
	}
	fmt.Fprintf(os.Stderr, "%s: %v\n", prog, err)
	var ue *UsageError
	if errors.As(err, &ue) {
		return ExitUsage
	}
	// A command with exit codes of its own (fogmesh audit verify's 3).
	var ec interface{ ExitCode() int }
	if errors.As(err, &ec) {
		return ec.ExitCode()
	}
	return ExitFailure
}

// LoadConfigFile decodes a YAML or JSON file into v. Unknown fields are
// errors that name the field.
func LoadConfigFile(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return &UsageError{Err: fmt.Errorf("config: %w", err)}
	}
	if err := DecodeConfig(b, v); err != nil {
		return &UsageError{Err: fmt.Errorf("config %s: %w", path, err)}
	}
	return nil
}

// DecodeConfig decodes YAML or JSON bytes into v, strictly.
func DecodeConfig(b []byte, v any) error {
	j, err := yaml.YAMLToJSON(b)
	if err != nil {
		return fmt.Errorf("yaml: %w", err)
	}
	if bytes.Equal(bytes.TrimSpace(j), []byte("null")) {
		return nil // empty file
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return fmt.Errorf("%s: cannot use a %s here (want %s)", te.Field, te.Value, te.Type)
		}
		return errors.New(strings.TrimPrefix(err.Error(), "json: "))
	}
	return nil
}

// LogFlags are the logging flags every long-running command takes.
type LogFlags struct {
	Level  string
	Format string
}

// Register adds -log-level and -log-format to fs.
func (l *LogFlags) Register(fs *flag.FlagSet) {
	fs.StringVar(&l.Level, "log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&l.Format, "log-format", "text", "log format: text or json")
}

// Logger builds the slog logger the flags ask for, writing to w.
func (l *LogFlags) Logger(w io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(l.Level)); err != nil {
		return nil, Usagef("-log-level: %v", err)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch l.Format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, Usagef("-log-format: %q is not text or json", l.Format)
}

// SignalContext is cancelled on SIGINT or SIGTERM.
func SignalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// FlagsSet returns the names of the flags given on the command line, so that
// they override the config file and nothing else does.
func FlagsSet(fs *flag.FlagSet) map[string]bool {
	m := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { m[f.Name] = true })
	return m
}

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

// Duration is a time.Duration in a config file, written as Go writes
// durations ("5s", "1m30s").
type Duration time.Duration

// MarshalText writes d as UnmarshalText reads it.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	*d = Duration(v)
	return err
}
