//go:build race

package httpproxy

// raceEnabled: sync.Pool drops items at random under the race detector,
// so allocation counts through a pool mean nothing there.
const raceEnabled = true
