// Package retry decides whether one attempt of an HTTP request is tried
// again, and when: the meaning of Envoy's retry conditions (the retryOn
// tokens an Istio VirtualService accepts), the classification of one
// attempt's outcome, Envoy's jittered exponential back-off and a retry
// budget per destination service. It does no I/O: the agent's L7 path
// (internal/agent/l7retry.go) feeds it outcomes and sleeps for it.
//
// References: Envoy's router filter, x-envoy-retry-on and
// x-envoy-retry-grpc-on
// (https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/router_filter);
// Istio's HTTPRetry
// (https://istio.io/latest/docs/reference/config/networking/virtual-service/#HTTPRetry)
// and its translation to Envoy (istio/istio pilot/pkg/networking/core/route/retry).
package retry

import (
	"fmt"
	"strconv"
	"strings"
)

// Cond is a set of retry conditions, Envoy's retry_on.
type Cond uint32

const (
	// On5xx: any 5xx response, or no response at all (connect failure,
	// disconnect, reset, refused stream, per-try timeout).
	On5xx Cond = 1 << iota
	// OnGatewayError: a 502, 503 or 504 response, or no response at all
	// (Envoy retries every reset under 5xx and gateway-error alike).
	OnGatewayError
	// OnReset: no response at all: disconnect, reset, read (per-try)
	// timeout after the request may have been sent.
	OnReset
	// OnConnectFailure: connecting to the endpoint failed (refused,
	// timed out): nothing of the request was sent.
	OnConnectFailure
	// OnEnvoyRateLimited: the response carries x-envoy-ratelimited.
	OnEnvoyRateLimited
	// OnRetriable4xx: a 409 response (Envoy's only retriable 4xx).
	OnRetriable4xx
	// OnRefusedStream: the endpoint reset the HTTP/2 stream with
	// REFUSED_STREAM: it did not process the request.
	OnRefusedStream
	// OnRetriableStatusCodes: a response whose status is in Policy.Codes.
	OnRetriableStatusCodes
	// OnRetriableHeaders: a response header matching the policy's
	// retriable headers. Istio has no field for that list, so under Istio
	// the condition never holds (Parse warns).
	OnRetriableHeaders
	// OnHTTP3PostConnectFailure: an HTTP/3 failure after connecting.
	// fogmesh never speaks HTTP/3 upstream: it never holds (Parse warns).
	OnHTTP3PostConnectFailure
	// The gRPC conditions (x-envoy-retry-grpc-on): the grpc-status in the
	// response headers, that is a trailers-only response (Envoy looks at
	// headers only, never at trailers).
	OnGRPCCancelled         // 1 CANCELLED
	OnGRPCDeadlineExceeded  // 4 DEADLINE_EXCEEDED
	OnGRPCResourceExhausted // 8 RESOURCE_EXHAUSTED
	OnGRPCInternal          // 13 INTERNAL
	OnGRPCUnavailable       // 14 UNAVAILABLE
)

// tokens maps every retryOn token Istio's validation accepts to its Cond.
var tokens = map[string]Cond{
	"5xx":                        On5xx,
	"gateway-error":              OnGatewayError,
	"reset":                      OnReset,
	"connect-failure":            OnConnectFailure,
	"envoy-ratelimited":          OnEnvoyRateLimited,
	"retriable-4xx":              OnRetriable4xx,
	"refused-stream":             OnRefusedStream,
	"retriable-status-codes":     OnRetriableStatusCodes,
	"retriable-headers":          OnRetriableHeaders,
	"http3-post-connect-failure": OnHTTP3PostConnectFailure,
	"cancelled":                  OnGRPCCancelled,
	"deadline-exceeded":          OnGRPCDeadlineExceeded,
	"internal":                   OnGRPCInternal,
	"resource-exhausted":         OnGRPCResourceExhausted,
	"unavailable":                OnGRPCUnavailable,
}

// grpcCodes: the grpc-status value each gRPC condition retries.
var grpcCodes = map[string]Cond{
	"1":  OnGRPCCancelled,
	"4":  OnGRPCDeadlineExceeded,
	"8":  OnGRPCResourceExhausted,
	"13": OnGRPCInternal,
	"14": OnGRPCUnavailable,
}

// IstioDefaultOn and IstioDefaultCodes are the policy Istio gives a route
// with no retries block, or with attempts but no retryOn (DefaultPolicy in
// Istio's retry.go): 2 retries on connect-failure, refused-stream, gRPC
// unavailable and cancelled, and 503.
const IstioDefaultOn = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"

// IstioDefaultCodes: see IstioDefaultOn.
var IstioDefaultCodes = []int{503}

// IstioDefaultAttempts: see IstioDefaultOn.
const IstioDefaultAttempts = 2

// On is a parsed retryOn list.
type On struct {
	Conds Cond
	// Codes are the statuses retried under OnRetriableStatusCodes.
	Codes []int
}

// Parse reads a comma-separated retryOn list as Istio does: each item a
// token of the tokens table or an HTTP status code (100-599), which is
// added to Codes and implies retriable-status-codes (Istio's parseRetryOn).
// An unknown token is an error, as in Istio's validation. warnings name
// tokens that are accepted but can never match in fogmesh.
func Parse(s string) (on On, warnings []string, err error) {
	for _, part := range strings.Split(s, ",") {
		tok := strings.TrimSpace(part)
		if tok == "" {
			continue
		}
		if n, err := strconv.Atoi(tok); err == nil {
			if n < 100 || n > 599 {
				return On{}, nil, fmt.Errorf("retryOn %q: status code %d is not within 100 and 599", s, n)
			}
			on.Codes = append(on.Codes, n)
			on.Conds |= OnRetriableStatusCodes
			continue
		}
		c, ok := tokens[tok]
		if !ok {
			return On{}, nil, fmt.Errorf("retryOn %q: %q is not a retry condition (want 5xx, gateway-error, reset, connect-failure, envoy-ratelimited, retriable-4xx, refused-stream, retriable-status-codes, retriable-headers, http3-post-connect-failure, cancelled, deadline-exceeded, internal, resource-exhausted, unavailable or a status code)", s, tok)
		}
		switch c {
		case OnRetriableHeaders:
			warnings = append(warnings, "retryOn retriable-headers never matches: there is no field for the retriable header names")
		case OnHTTP3PostConnectFailure:
			warnings = append(warnings, "retryOn http3-post-connect-failure never matches: fogmesh does not speak HTTP/3 to endpoints")
		}
		on.Conds |= c
	}
	return on, warnings, nil
}

// Failure is how an attempt ended without a response.
type Failure int

const (
	// Answered: the endpoint sent response headers (Outcome.Status).
	Answered Failure = iota
	// ConnectFailure: connecting failed; nothing was sent.
	ConnectFailure
	// RefusedStream: an HTTP/2 REFUSED_STREAM reset; not processed.
	RefusedStream
	// Reset: the connection or stream broke after the request may have
	// been sent, before response headers.
	Reset
	// Timeout: the per-try timeout ran out before response headers.
	Timeout
)

// Outcome is what one attempt produced, as far as retrying cares.
type Outcome struct {
	Failure Failure
	// Status is the response status (Failure == Answered).
	Status int
	// GRPCStatus is the grpc-status of the response headers ("" if none:
	// only a trailers-only response has one there).
	GRPCStatus string
	// RateLimited: the response carries x-envoy-ratelimited.
	RateLimited bool
}

// Matches reports whether on lists a condition the outcome meets.
func (on On) Matches(o Outcome) bool {
	c := on.Conds
	switch o.Failure {
	case ConnectFailure:
		return c&(On5xx|OnGatewayError|OnReset|OnConnectFailure) != 0
	case RefusedStream:
		return c&(On5xx|OnGatewayError|OnReset|OnRefusedStream) != 0
	case Reset, Timeout:
		return c&(On5xx|OnGatewayError|OnReset) != 0
	}
	s := o.Status
	switch {
	case c&On5xx != 0 && s >= 500 && s <= 599,
		c&OnGatewayError != 0 && (s == 502 || s == 503 || s == 504),
		c&OnRetriable4xx != 0 && s == 409,
		c&OnEnvoyRateLimited != 0 && o.RateLimited:
		return true
	}
	if c&OnRetriableStatusCodes != 0 {
		for _, code := range on.Codes {
			if code == s {
				return true
			}
		}
	}
	if o.GRPCStatus != "" && c&grpcCodes[o.GRPCStatus] != 0 {
		return true
	}
	return false
}

// SentNothing reports whether the endpoint cannot have acted on the
// request: then a retry is safe whatever the method or body.
func (o Outcome) SentNothing() bool {
	return o.Failure == ConnectFailure || o.Failure == RefusedStream
}

// idempotent methods may be repeated (RFC 9110 §9.2.2).
var idempotent = map[string]bool{"GET": true, "HEAD": true, "OPTIONS": true, "TRACE": true, "PUT": true, "DELETE": true}

// Idempotent reports whether method may be sent twice with the effect of once.
func Idempotent(method string) bool { return idempotent[method] }
