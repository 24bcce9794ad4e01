// Package handshake holds the TLS handshake-rate benchmarks of issue 5 (no
// code outside its tests): full mutual TLS 1.3 handshakes with ECDSA P-256
// certificates and resumed ones (session tickets), over loopback TCP.
// bench/security.sh runs them; the figure is handshakes/s.
package handshake
