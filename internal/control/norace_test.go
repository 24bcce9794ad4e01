//go:build !race

package control

// raceBuild: the race detector changes stack frames (tests of stack use skip it).
const raceBuild = false
