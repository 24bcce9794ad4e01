//go:build !unix

package memtrim

import "time"

// ProcessCPU: not read here (0); allocation alone tells memtrim load.
func ProcessCPU() time.Duration { return 0 }
