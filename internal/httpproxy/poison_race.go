//go:build race

package httpproxy

// poisonHeaders: under the race detector (the tests' build), every other
// lent header is not given back to the pool when its request ends but
// overwritten with poisonValue, so a holder that reads it after Done
// (which would read another client's header in a release build) fails its
// test instead.
const poisonHeaders = true
