package retry

import (
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
)

func TestParse(t *testing.T) {
	cases := []struct {
		in      string
		conds   Cond
		codes   []int
		warn    string
		wantErr string
	}{
		{in: "5xx", conds: On5xx},
		{in: "gateway-error,connect-failure", conds: OnGatewayError | OnConnectFailure},
		{in: " reset , refused-stream ", conds: OnReset | OnRefusedStream},
		{in: "envoy-ratelimited,retriable-4xx", conds: OnEnvoyRateLimited | OnRetriable4xx},
		{in: IstioDefaultOn, conds: OnConnectFailure | OnRefusedStream | OnGRPCUnavailable | OnGRPCCancelled | OnRetriableStatusCodes},
		{in: "deadline-exceeded,internal,resource-exhausted", conds: OnGRPCDeadlineExceeded | OnGRPCInternal | OnGRPCResourceExhausted},
		{in: "503,429", conds: OnRetriableStatusCodes, codes: []int{503, 429}}, // bare codes imply retriable-status-codes (Istio)
		{in: "retriable-status-codes,500", conds: OnRetriableStatusCodes, codes: []int{500}},
		{in: "retriable-headers", conds: OnRetriableHeaders, warn: "never matches"},
		{in: "http3-post-connect-failure", conds: OnHTTP3PostConnectFailure, warn: "HTTP/3"},
		{in: "", conds: 0},
		{in: "5xx,,", conds: On5xx},
		{in: "5XX", wantErr: `"5XX" is not a retry condition`},
		{in: "5xx,bogus", wantErr: `"bogus" is not a retry condition`},
		{in: "600", wantErr: "not within 100 and 599"},
		{in: "99", wantErr: "not within 100 and 599"},
		{in: "-503", wantErr: "not within 100 and 599"},
	}
	for _, c := range cases {
		on, warns, err := Parse(c.in)
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("Parse(%q) error = %v, want %q", c.in, err, c.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("Parse(%q): %v", c.in, err)
			continue
		}
		if on.Conds != c.conds || !slices.Equal(on.Codes, c.codes) {
			t.Errorf("Parse(%q) = %b %v, want %b %v", c.in, on.Conds, on.Codes, c.conds, c.codes)
		}
		if got := strings.Join(warns, ";"); (c.warn == "") != (got == "") || !strings.Contains(got, c.warn) {
			t.Errorf("Parse(%q) warnings %q, want %q", c.in, got, c.warn)
		}
	}
	// The document format (api.RetryConditions) and this package know
	// the same tokens.
	for _, tok := range api.RetryConditions {
		if _, _, err := Parse(tok); err != nil {
			t.Errorf("%s: %v", tok, err)
		}
	}
	if len(tokens) != len(api.RetryConditions) {
		t.Errorf("%d tokens here, %d in api.RetryConditions", len(tokens), len(api.RetryConditions))
	}
}

func mustParse(t *testing.T, s string) On {
	t.Helper()
	on, _, err := Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return on
}

func TestMatches(t *testing.T) {
	status := func(s int) Outcome { return Outcome{Status: s} }
	grpc := func(code string) Outcome { return Outcome{Status: 200, GRPCStatus: code} }
	cases := []struct {
		on   string
		o    Outcome
		want bool
	}{
		{"5xx", status(500), true},
		{"5xx", status(501), true},
		{"5xx", status(599), true},
		{"5xx", status(404), false},
		{"5xx", status(200), false},
		{"5xx", Outcome{Failure: ConnectFailure}, true},
		{"5xx", Outcome{Failure: Reset}, true},
		{"5xx", Outcome{Failure: Timeout}, true},
		{"5xx", Outcome{Failure: RefusedStream}, true},
		{"gateway-error", status(500), false},
		{"gateway-error", status(502), true},
		{"gateway-error", status(503), true},
		{"gateway-error", status(504), true},
		{"gateway-error", Outcome{Failure: Timeout}, true},
		{"reset", Outcome{Failure: Reset}, true},
		{"reset", Outcome{Failure: Timeout}, true},
		{"reset", status(503), false},
		{"connect-failure", Outcome{Failure: ConnectFailure}, true},
		{"connect-failure", Outcome{Failure: Reset}, false},
		{"connect-failure", Outcome{Failure: Timeout}, false},
		{"connect-failure", status(503), false},
		{"refused-stream", Outcome{Failure: RefusedStream}, true},
		{"refused-stream", Outcome{Failure: Reset}, false},
		{"retriable-4xx", status(409), true},
		{"retriable-4xx", status(429), false},
		{"envoy-ratelimited", Outcome{Status: 429, RateLimited: true}, true},
		{"envoy-ratelimited", status(429), false},
		{"retriable-status-codes", status(503), false}, // no codes listed
		{"503", status(503), true},
		{"503", status(502), false},
		{"retriable-status-codes,429", status(429), true},
		{"retriable-headers", status(503), false},
		{"unavailable", grpc("14"), true},
		{"unavailable", grpc("13"), false},
		{"cancelled", grpc("1"), true},
		{"deadline-exceeded", grpc("4"), true},
		{"resource-exhausted", grpc("8"), true},
		{"internal", grpc("13"), true},
		{"internal", status(500), false},
		{"5xx", grpc("14"), false}, // gRPC errors come with HTTP 200
		{IstioDefaultOn + ",503", status(503), true},
		{IstioDefaultOn + ",503", status(500), false},
		{IstioDefaultOn, Outcome{Failure: Reset}, false},
		{IstioDefaultOn, grpc("14"), true},
		{"", status(503), false},
	}
	for _, c := range cases {
		if got := mustParse(t, c.on).Matches(c.o); got != c.want {
			t.Errorf("%q matches %+v = %v, want %v", c.on, c.o, got, c.want)
		}
	}
}

func TestPolicyRetry(t *testing.T) {
	p := Policy{Retries: 2, On: mustParse(t, "5xx")}
	cases := []struct {
		name       string
		any        bool
		method     string
		replayable bool
		o          Outcome
		want       bool
	}{
		{"GET 500", false, "GET", true, Outcome{Status: 500}, true},
		{"POST 500 idempotent only", false, "POST", true, Outcome{Status: 500}, false},
		{"POST 500 any method", true, "POST", true, Outcome{Status: 500}, true},
		{"POST connect failure", false, "POST", false, Outcome{Failure: ConnectFailure}, true},
		{"POST refused stream", false, "POST", true, Outcome{Failure: RefusedStream}, true},
		{"refused stream, body spent", true, "POST", false, Outcome{Failure: RefusedStream}, false},
		{"GET body not buffered", true, "GET", false, Outcome{Status: 500}, false},
		{"not a condition", true, "GET", true, Outcome{Status: 404}, false},
	}
	for _, c := range cases {
		p.AnyMethod = c.any
		if got := p.Retry(c.method, c.replayable, c.o); got != c.want {
			t.Errorf("%s: Retry = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestBackoffBounds(t *testing.T) {
	top := Backoff{Int64N: func(n int64) int64 { return n - 1 }}
	zero := Backoff{Int64N: func(int64) int64 { return 0 }}
	want := []time.Duration{25, 75, 175, 250, 250, 250} // ms: (2^n − 1)·25 capped at 250
	for i, w := range want {
		n := i + 1
		if got := time.Duration(top.Delay(n)); got != w*time.Millisecond-1 {
			t.Errorf("retry %d: top draw %v, want %v", n, got, w*time.Millisecond-1)
		}
		if got := zero.Delay(n); got != 0 {
			t.Errorf("retry %d: bottom draw %v, want 0", n, got)
		}
	}
	if got := top.Delay(100); got != 250*time.Millisecond-1 {
		t.Errorf("retry 100: %v", got)
	}
	// The default draw stays within the bounds.
	for n := 1; n < 8; n++ {
		for i := 0; i < 50; i++ {
			if d := (Backoff{}).Delay(n); d < 0 || d >= DefaultMax {
				t.Fatalf("retry %d: %v outside [0, %v)", n, d, DefaultMax)
			}
		}
	}
	b := Backoff{Base: 10 * time.Millisecond, Max: 15 * time.Millisecond, Int64N: top.Int64N}
	if got := b.Delay(2); got != 15*time.Millisecond-1 {
		t.Errorf("custom: %v", got)
	}
}

func TestBudgetPerService(t *testing.T) {
	b := NewBudget()
	// details fails: its retries spend its own account (reserve 10 plus
	// 0.2 per request).
	spent := 0
	for i := 0; i < 150; i++ {
		b.Deposit("demo/details")
		if b.Withdraw("demo/details") {
			spent++
		}
	}
	if spent >= 150 || spent < 10 {
		t.Fatalf("details retried %d of 150: the budget should bound it", spent)
	}
	if b.Withdraw("demo/details") {
		t.Fatal("details' account should be empty")
	}
	// reviews still has all of its own: as many retries as a fresh budget.
	fresh, got, want := NewBudget(), 0, 0
	for i := 0; i < 20; i++ {
		b.Deposit("demo/reviews")
		fresh.Deposit("demo/reviews")
		if b.Withdraw("demo/reviews") {
			got++
		}
		if fresh.Withdraw("demo/reviews") {
			want++
		}
	}
	if got != want || got < 10 {
		t.Fatalf("reviews retried %d of 20, a fresh budget %d: another service's failures spent its budget", got, want)
	}
	b.Forget(func(svc string) bool { return svc == "demo/reviews" })
	if !b.Withdraw("demo/details") {
		t.Fatal("a forgotten service starts again from the reserve")
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"5xx", IstioDefaultOn, "503,429", "5xx,,bogus", " reset ", "600", "-1", "retriable-headers"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		on, _, err := Parse(s)
		if err != nil {
			return
		}
		for _, c := range on.Codes {
			if c < 100 || c > 599 {
				t.Fatalf("code %d accepted", c)
			}
		}
		on.Matches(Outcome{Status: 503, GRPCStatus: "14"})
	})
}

// TestBudgetAccountKept: an account a caller keeps is the service's, as
// the budget's methods by name see it, until Forget drops it; and its
// balance loses no deposit or withdrawal to concurrent ones.
func TestBudgetAccountKept(t *testing.T) {
	b := &Budget{Ratio: 1, Reserve: 10, Cap: 1e9}
	acct := b.Account("demo/a")
	if b.Account("demo/a") != acct {
		t.Fatal("a second look-up gave another account")
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 1000 {
				acct.Deposit()
			}
		})
	}
	wg.Wait()
	var took atomic.Int64
	for range 4 {
		wg.Go(func() {
			for range 1100 {
				if b.Withdraw("demo/a") {
					took.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if n := took.Load(); n != 4010 {
		t.Fatalf("%d retries taken; want the reserve and the 4000 deposits, 4010", n)
	}
	full := NewBudget()
	f := full.Account("demo/b")
	for range 1000 {
		f.Deposit()
	}
	spent := 0
	for full.Withdraw("demo/b") {
		spent++
	}
	if spent != 100 {
		t.Fatalf("%d retries from a full account; want Cap, 100", spent)
	}
	b.Forget(func(string) bool { return false })
	if b.Account("demo/a") == acct || !b.Withdraw("demo/a") {
		t.Fatal("a forgotten service should start a new account from the reserve")
	}
}
