// Package cli holds what fogmesh's commands share: config files (YAML or
// JSON, unknown fields are errors), structured logging, signal handling and
// exit codes (from internal/cli/base, which the lean relay binary uses
// alone). It also holds the agent command, which both the full fogmesh
// binary and the lean fogmesh-agent binary run; it must not import the
// control plane, so the agent binary stays small.
package cli

import (
	"context"
	"flag"
	"fmt"
	"os"

	"sigs.k8s.io/yaml"

	"github.com/fogmesh/fogmesh/internal/api"

	"github.com/fogmesh/fogmesh/internal/cli/base"
)

// Exit codes.
const (
	ExitOK      = base.ExitOK
	ExitFailure = base.ExitFailure
	ExitUsage   = base.ExitUsage
)

// The shared command plumbing, from base.
type (
	UsageError = base.UsageError
	LogFlags   = base.LogFlags
)

// Usagef returns a UsageError.
func Usagef(format string, args ...any) error { return base.Usagef(format, args...) }

// ExitCode maps an error to an exit code and prints it.
func ExitCode(prog string, err error) int { return base.ExitCode(prog, err) }

// LoadConfigFile decodes a YAML or JSON file into v, strictly.
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

// DecodeConfig decodes YAML or JSON bytes into v, strictly. Its error
// names the field by its full path (workloads[0].check.bogus,
// healthInterval), which encoding/json alone does not.
func DecodeConfig(b []byte, v any) error {
	err := base.DecodeConfig(b, v)
	if err == nil {
		return nil
	}
	if j, jerr := yaml.YAMLToJSON(b); jerr == nil {
		if fe := api.LocateDecodeError(j, v); fe != nil {
			return fe
		}
	}
	return err
}

// SignalContext is cancelled on SIGINT or SIGTERM.
func SignalContext() (context.Context, context.CancelFunc) { return base.SignalContext() }

// FlagsSet returns the names of the flags given on the command line.
func FlagsSet(fs *flag.FlagSet) map[string]bool { return base.FlagsSet(fs) }

// WriteAddrFile writes the bound addresses to path as JSON, atomically.
func WriteAddrFile(path string, addrs map[string]string) error {
	return base.WriteAddrFile(path, addrs)
}

// Version is fogmesh's version, set at build time with
// -ldflags "-X github.com/fogmesh/fogmesh/internal/cli.Version=v0.1.0".
var Version = "v0.1.0-dev"

// Commit is the git commit the binary was built from, set by the Makefile
// with -ldflags "-X github.com/fogmesh/fogmesh/internal/cli.Commit=...":
// the build's own VCS stamp is missing with -buildvcs=false or outside a
// checkout, so `fogmesh version` reads this first.
var Commit = ""
