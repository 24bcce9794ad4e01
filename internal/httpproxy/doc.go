// Package httpproxy is the HTTP machinery of fogmesh's proxies, with no
// knowledge of services, endpoints or authorization: the header rules
// every HTTP path applies (hygiene.go), the client side of the HTTP/1.1
// fast framing (h1.go), a pool of upstream HTTP/1.1 connections that
// round-trips on the caller's goroutine (pool.go) and reads plain heads
// without net/http's parse, a plain response's field lines passed on as
// they came (lean.go, rawresp.go), the bounds on slow
// request bodies and slow readers (body.go), and the drain of HTTP/2
// upstream connections whose mesh path was left (h2drain.go).
package httpproxy
