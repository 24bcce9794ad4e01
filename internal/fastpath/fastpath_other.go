//go:build !linux

package fastpath

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"time"
)

// FastPath is Linux only.
type FastPath struct{}

// Result is what Relay did.
type Result struct {
	ClientToUp, UpToClient             int64
	Kernel                             bool
	KernelClientToUp, KernelUpToClient int64
}

var errUnsupported = errors.New("fastpath: BPF sockmap is Linux only")

// Open fails: the fast path is Linux only.
func Open(cgroupDir, mountDir string) (*FastPath, error) { return nil, errUnsupported }

func (f *FastPath) Cgroup() string                                 { return "" }
func (f *FastPath) Close() error                                   { return nil }
func (f *FastPath) AddListener(netip.AddrPort) error               { return errUnsupported }
func (f *FastPath) RemoveListener(netip.AddrPort)                  {}
func (f *FastPath) PrepareEndpoint(netip.AddrPort) (func(), error) { return nil, errUnsupported }
func (f *FastPath) Relay(context.Context, *net.TCPConn, *net.TCPConn, int64, time.Duration) (Result, error) {
	return Result{}, errUnsupported
}

func (f *FastPath) ReadableCountWorks() (bool, error) { return false, errUnsupported }
