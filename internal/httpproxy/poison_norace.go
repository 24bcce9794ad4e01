//go:build !race

package httpproxy

// poisonHeaders: see poison_race.go.
const poisonHeaders = false
