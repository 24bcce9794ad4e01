//go:build !linux

package memtrim

import "errors"

// ReleaseCode is Linux only (madvise on the executable's mappings).
func ReleaseCode() (int64, error) {
	return 0, errors.New("memtrim: releasing code pages needs Linux")
}
