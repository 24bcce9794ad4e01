//go:build !unix

package memtrim

import "time"

// processCPU: not read here; allocation alone tells load.
func processCPU() time.Duration { return 0 }
