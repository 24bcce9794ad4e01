//go:build race

package relay

// raceEnabled: the race detector is on (its goroutines use larger stacks).
const raceEnabled = true
