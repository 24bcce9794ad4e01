package agent

import (
	"fmt"
	"time"
)

// The rows of TestIstioTasks (istiotasks_test.go): documents written after
// Istio's task pages, and the outcome each page gives.

// all: every answer is page.
func all(page string) map[string]float64 { return map[string]float64{page: 1} }

// page is productpage's answer for the given details, reviews and ratings.
func page(details, reviews, ratings string) string {
	return fmt.Sprintf("productpage-v1 details=%s reviews=%s ratings=%s", details, reviews, ratings)
}

// Pages of the bookinfo tasks: reviews v1 shows no stars (ratings not
// called), v2 black and v3 red stars (ratings-v1's answer).
var (
	pageV1       = page("details-v1", "reviews-v1", "-")
	pageV2       = page("details-v1", "reviews-v2", "ratings-v1")
	pageV3       = page("details-v1", "reviews-v3", "ratings-v1")
	pageNoReview = page("details-v1", "unavailable", "-")
)

// bookinfoDRs define the versions of the bookinfo services as subsets.
const bookinfoDRs = `
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: productpage, namespace: NS}
spec:
  host: productpage
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: NS}
spec:
  host: reviews
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
  - name: v3
    labels: {version: v3}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: NS}
spec:
  host: ratings
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: details, namespace: NS}
spec:
  host: details
  subsets: [{name: v1, labels: {version: v1}}]
`

// toV1 is a VirtualService sending every request for host to its v1.
func toV1(host string) string {
	return fmt.Sprintf(`
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: %s, namespace: NS}
spec:
  hosts: [%s]
  http:
  - route:
    - destination: {host: %s, subset: v1}
`, host, host, host)
}

// allV1 routes each bookinfo service to its v1 (the tasks' starting point).
var allV1 = toV1("productpage") + toV1("details") + toV1("ratings") + toV1("reviews")

// reviewsJasonV2 sends the user jason to reviews v2, everyone else to v1.
const reviewsJasonV2 = `
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: NS}
spec:
  hosts: [reviews]
  http:
  - match:
    - headers:
        end-user: {exact: jason}
    route:
    - destination: {host: reviews, subset: v2}
  - route:
    - destination: {host: reviews, subset: v1}
`

// ratingsForJason puts fault (an http[].fault value) on jason's requests
// to ratings; everyone else's go to v1 untouched.
func ratingsForJason(fault string) string {
	return `
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: NS}
spec:
  hosts: [ratings]
  http:
  - match:
    - headers:
        end-user: {exact: jason}
    fault: ` + fault + `
    route:
    - destination: {host: ratings, subset: v1}
  - route:
    - destination: {host: ratings, subset: v1}
`
}

// reviewsV2 routes reviews to v2 (which calls ratings), with extra fields
// on the route rule (e.g. "    timeout: 0.5s\n").
func reviewsV2(extra string) string {
	return `
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: NS}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v2}
` + extra
}

// ratingsDelay2s delays every request to ratings by 2 s.
const ratingsDelay2s = `
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: NS}
spec:
  hosts: [ratings]
  http:
  - fault:
      delay:
        percentage: {value: 100}
        fixedDelay: 2s
    route:
    - destination: {host: ratings, subset: v1}
`

// httpbinVS routes httpbin to v1 with extra fields on the route rule, and
// defines its subsets.
func httpbinVS(extra string) string {
	return `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin, namespace: NS}
spec:
  hosts: [httpbin]
  http:
  - route:
    - destination: {host: httpbin, subset: v1}
      weight: 100
` + extra + `---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin, namespace: NS}
spec:
  host: httpbin
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
`
}

// Authorization for HTTP traffic: policies added one by one.
const (
	allowNothing = `
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: NS}
spec: {}
`
	productpageViewer = `
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: productpage-viewer, namespace: NS}
spec:
  selector:
    matchLabels: {app: productpage}
  action: ALLOW
  rules:
  - to:
    - operation: {methods: [GET]}
`
)

// viewer allows GET on app from the service account sa (of namespace NS).
func viewer(app, sa string) string {
	return fmt.Sprintf(`
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: %s-viewer, namespace: NS}
spec:
  selector:
    matchLabels: {app: %s}
  action: ALLOW
  rules:
  - from:
    - source: {principals: [cluster.local/ns/NS/sa/%s]}
    to:
    - operation: {methods: [GET]}
`, app, app, sa)
}

const (
	jason   = "jason"
	unavail = "unavailable"
)

// third: the three reviews versions share round-robin requests equally.
func third(v1, v2, v3 string) map[string]float64 {
	return map[string]float64{v1: 1.0 / 3, v2: 1.0 / 3, v3: 1.0 / 3}
}

var istioTaskRows = []taskRow{
	// https://istio.io/latest/docs/tasks/traffic-management/request-routing/
	{task: "request routing", name: "no rule: reviews versions in turn, stars or none",
		docs: bookinfoDRs, steps: []taskStep{
			{n: 30, want: third(pageV1, pageV2, pageV3), tol: 0.15},
		}},
	{task: "request routing", name: "all services to v1: no stars",
		docs: allV1 + bookinfoDRs, steps: []taskStep{
			{n: 30, want: all(pageV1)},
			{user: jason, n: 10, want: all(pageV1)},
		}},
	{task: "request routing", name: "user jason to reviews v2: black stars for jason only",
		docs: toV1("productpage") + toV1("details") + toV1("ratings") + reviewsJasonV2 + bookinfoDRs, steps: []taskStep{
			{user: jason, n: 20, want: all(pageV2)},
			{n: 20, want: all(pageV1)},
			{user: "ana", n: 10, want: all(pageV1)},
			{user: "Jason", n: 10, want: all(pageV1)}, // exact is case-sensitive
		}},
	// A route to a subset no DestinationRule defines: Envoy has no such
	// cluster and answers 503 (cluster_not_found_response_code).
	{task: "request routing", name: "route to an undefined subset answers 503",
		docs: `
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: NS}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v4}
` + bookinfoDRs, steps: []taskStep{
			{svc: "reviews", n: 5, want: all("503")},
			{n: 5, want: all(pageNoReview)},
		}},
	// The task's older form: jason is told by a cookie, matched by a
	// regex, which must match the whole value (Envoy's safe_regex).
	{task: "request routing", name: "cookie user=jason by regex to reviews v2",
		docs: `
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: NS}
spec:
  hosts: [reviews]
  http:
  - match:
    - headers:
        cookie: {regex: "^(.*?;\\s*)?(user=jason)(;.*)?$"}
    route:
    - destination: {host: reviews, subset: v2}
  - route:
    - destination: {host: reviews, subset: v1}
` + bookinfoDRs, steps: []taskStep{
			{svc: "reviews", cookie: "user=jason", n: 5, want: all("reviews-v2 ratings=ratings-v1")},
			{svc: "reviews", cookie: "theme=dark; user=jason; lang=en", n: 5, want: all("reviews-v2 ratings=ratings-v1")},
			{svc: "reviews", cookie: "user=jasonx", n: 5, want: all("reviews-v1")},
			{svc: "reviews", cookie: "xuser=jason", n: 5, want: all("reviews-v1")},
			{svc: "reviews", n: 5, want: all("reviews-v1")},
		}},
	// https://istio.io/latest/docs/tasks/traffic-management/fault-injection/
	{task: "fault injection", name: "7s delay on ratings for jason: reviews waits, productpage gives up",
		docs: toV1("productpage") + toV1("details") + reviewsJasonV2 +
			ratingsForJason("{delay: {percentage: {value: 100.0}, fixedDelay: 7s}}") + bookinfoDRs,
		steps: []taskStep{
			// reviews v2's 10 s timeout outlasts the delay: no error there.
			{svc: "reviews", user: jason, want: all("reviews-v2 ratings=ratings-v1"), minTime: 7 * time.Second, maxTime: 10 * time.Second},
			// productpage's 3 s timeout, tried twice: the task's bug, reviews
			// unavailable after about 6 s.
			{user: jason, want: all(pageNoReview), minTime: 6 * time.Second, maxTime: 9 * time.Second},
			{n: 10, want: all(pageV1), maxTime: 2 * time.Second},
		}},
	{task: "fault injection", name: "HTTP 500 abort on ratings for jason: ratings unavailable",
		docs: toV1("productpage") + toV1("details") + reviewsJasonV2 +
			ratingsForJason("{abort: {percentage: {value: 100.0}, httpStatus: 500}}") + bookinfoDRs,
		steps: []taskStep{
			{svc: "ratings", user: jason, n: 10, want: all("500")},
			{svc: "ratings", n: 10, want: all("ratings-v1")},
			{user: jason, n: 10, want: all(page("details-v1", "reviews-v2", unavail))},
			{n: 10, want: all(pageV1)},
		}},
	// The VirtualService reference: a fault's percentage of requests, and
	// "timeouts or retries will not be enabled when faults are enabled"
	// (Envoy's fault filter answers or waits before the router).
	{task: "fault injection", name: "HTTP 503 abort for half the requests, not retried",
		docs: toV1("productpage") + toV1("details") + toV1("reviews") + `
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: NS}
spec:
  hosts: [ratings]
  http:
  - fault:
      abort:
        percentage: {value: 50}
        httpStatus: 503
    retries: {attempts: 3, retryOn: 5xx}
    route:
    - destination: {host: ratings, subset: v1}
` + bookinfoDRs, steps: []taskStep{
			{svc: "ratings", n: 400, want: map[string]float64{"503": 0.5, "ratings-v1": 0.5}, tol: 0.1},
		}},
	{task: "fault injection", name: "a 1s delay is not cut by the rule's 0.5s timeout",
		docs: toV1("productpage") + toV1("details") + toV1("reviews") + `
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: NS}
spec:
  hosts: [ratings]
  http:
  - fault:
      delay:
        percentage: {value: 100}
        fixedDelay: 1s
    timeout: 0.5s
    route:
    - destination: {host: ratings, subset: v1}
` + bookinfoDRs, steps: []taskStep{
			{svc: "ratings", n: 2, want: all("ratings-v1"), minTime: time.Second, maxTime: 3 * time.Second},
		}},
	// https://istio.io/latest/docs/tasks/traffic-management/traffic-shifting/
	{task: "traffic shifting", name: "50% to reviews v3", docs: toV1("productpage") + toV1("details") + toV1("ratings") + `
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: NS}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 50
    - destination: {host: reviews, subset: v3}
      weight: 50
` + bookinfoDRs, steps: []taskStep{
		{svc: "reviews", n: 400, want: map[string]float64{"reviews-v1": 0.5, "reviews-v3 ratings=ratings-v1": 0.5}, tol: 0.1},
		{n: 100, want: map[string]float64{pageV1: 0.5, pageV3: 0.5}, tol: 0.2},
	}},
	{task: "traffic shifting", name: "100% to reviews v3: red stars always", docs: toV1("productpage") + toV1("details") + toV1("ratings") + `
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: NS}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v3}
` + bookinfoDRs, steps: []taskStep{
		{n: 30, want: all(pageV3)},
	}},
	// https://istio.io/latest/docs/tasks/traffic-management/request-timeouts/
	{task: "request timeouts", name: "2s delay on ratings, no timeout: the page waits 2 s",
		docs: toV1("productpage") + toV1("details") + reviewsV2("") + ratingsDelay2s + bookinfoDRs, steps: []taskStep{
			{n: 2, want: all(pageV2), minTime: 2 * time.Second, maxTime: 4 * time.Second},
		}},
	{task: "request timeouts", name: "reviews timeout 0.5s: reviews unavailable after about 1 s",
		docs: toV1("productpage") + toV1("details") + reviewsV2("    timeout: 0.5s\n") + ratingsDelay2s + bookinfoDRs, steps: []taskStep{
			// Envoy answers a route timeout 504; productpage tries twice.
			{svc: "reviews", n: 2, want: all("504"), minTime: 500 * time.Millisecond, maxTime: 1800 * time.Millisecond},
			{n: 2, want: all(pageNoReview), minTime: time.Second, maxTime: 3 * time.Second},
		}},
	// https://istio.io/latest/docs/tasks/traffic-management/mirroring/
	{task: "mirroring", name: "all to httpbin v1, no mirror", docs: httpbinVS(""), steps: []taskStep{
		{svc: "httpbin", n: 10, want: all("httpbin-v1"), mirrored: map[string]int{"httpbin-v1": 10, "httpbin-v2": 0}},
	}},
	{task: "mirroring", name: "mirror 100% to httpbin v2: v1 answers, v2 gets a copy of each",
		docs: httpbinVS("    mirror: {host: httpbin, subset: v2}\n    mirrorPercentage: {value: 100.0}\n"), steps: []taskStep{
			{svc: "httpbin", n: 10, want: all("httpbin-v1"), mirrored: map[string]int{"httpbin-v1": 10, "httpbin-v2": 10}},
			{svc: "httpbin", method: "POST", n: 5, want: all("httpbin-v1"), mirrored: map[string]int{"httpbin-v1": 5, "httpbin-v2": 5}},
		}},
	// The VirtualService reference: without mirrorPercentage, every
	// request is mirrored.
	{task: "mirroring", name: "mirror without a percentage copies every request",
		docs: httpbinVS("    mirror: {host: httpbin, subset: v2}\n"), steps: []taskStep{
			{svc: "httpbin", n: 20, want: all("httpbin-v1"), mirrored: map[string]int{"httpbin-v1": 20, "httpbin-v2": 20}},
		}},
	// https://istio.io/latest/docs/tasks/security/authorization/authz-http/
	{task: "authorization for HTTP traffic", name: "allow-nothing: RBAC access denied", docs: allowNothing + bookinfoDRs, steps: []taskStep{
		{n: 5, want: all("403")},
		{svc: "details", from: "productpage", n: 5, want: all("403")},
	}},
	{task: "authorization for HTTP traffic", name: "productpage-viewer: the page, without details and reviews",
		docs: allowNothing + productpageViewer + bookinfoDRs, steps: []taskStep{
			{n: 5, want: all(page(unavail, unavail, "-"))},
			{method: "POST", n: 5, want: all("403")},
		}},
	{task: "authorization for HTTP traffic", name: "details-viewer and reviews-viewer: ratings still denied",
		docs: allowNothing + productpageViewer + viewer("details", "bookinfo-productpage") + viewer("reviews", "bookinfo-productpage") + bookinfoDRs,
		steps: []taskStep{
			{n: 30, want: third(pageV1, page("details-v1", "reviews-v2", unavail), page("details-v1", "reviews-v3", unavail)), tol: 0.15},
			{svc: "details", from: "productpage", n: 5, want: all("details-v1")},
			{svc: "details", from: "productpage", method: "POST", n: 5, want: all("403")},
			{svc: "details", n: 5, want: all("403")},                      // not productpage's identity
			{svc: "ratings", from: "productpage", n: 5, want: all("403")}, // not reviews'
		}},
	{task: "authorization for HTTP traffic", name: "ratings-viewer: every part of the page",
		docs: allowNothing + productpageViewer + viewer("details", "bookinfo-productpage") + viewer("reviews", "bookinfo-productpage") +
			viewer("ratings", "bookinfo-reviews") + bookinfoDRs,
		steps: []taskStep{
			{n: 30, want: third(pageV1, pageV2, pageV3), tol: 0.15},
		}},
}
