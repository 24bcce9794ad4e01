package retry

import (
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// Policy is one request's retry policy.
type Policy struct {
	// Retries is how many attempts may follow the first.
	Retries int
	// On: the outcomes retried.
	On On
	// AnyMethod retries any method, as Envoy does; otherwise only
	// idempotent ones (RFC 9110) once the request may have been sent.
	AnyMethod bool
}

// Retry reports whether an attempt that ended in o may be tried again
// (retries left and budget aside). replayable: the request's body can be
// sent again (none, or all of it buffered). A connect failure sent
// nothing, so it needs neither; a refused stream was not processed, so it
// needs no idempotent method.
func (p Policy) Retry(method string, replayable bool, o Outcome) bool {
	if !p.On.Matches(o) {
		return false
	}
	if !replayable && o.Failure != ConnectFailure {
		return false
	}
	return o.SentNothing() || p.AnyMethod || Idempotent(method)
}

// Backoff is Envoy's fully jittered exponential back-off: before retry n
// (1 for the first) it waits a uniform draw from [0, (2^n − 1)·Base),
// capped at Max (Envoy's JitteredExponentialBackOffStrategy; Envoy's
// defaults: base 25 ms, max 10 × base).
type Backoff struct {
	Base, Max time.Duration
	// Int64N draws from [0, n) (math/rand/v2.Int64N when nil).
	Int64N func(n int64) int64
}

// Envoy's default back-off.
const (
	DefaultBase = 25 * time.Millisecond
	DefaultMax  = 10 * DefaultBase
)

// Delay is the pause before retry n (n ≥ 1).
func (b Backoff) Delay(n int) time.Duration {
	base, maxD := b.Base, b.Max
	if base <= 0 {
		base = DefaultBase
	}
	if maxD <= 0 {
		maxD = 10 * base
	}
	n = min(max(n, 1), 30)
	bound := maxD
	if mult := int64(1)<<n - 1; mult < int64(maxD/base) {
		bound = time.Duration(mult) * base
	}
	draw := b.Int64N
	if draw == nil {
		draw = randInt64N
	}
	return time.Duration(draw(int64(bound)))
}

// Budget bounds retries per destination service: every request to a
// service deposits Ratio of a token into that service's account (from a
// Reserve, up to Cap), every retry takes one. So retries add at most
// about Ratio to a service's request rate, and a failing service cannot
// spend another's budget (issue 11: 150 failing requests to one service
// cut another's retried successes from 20/20 to 4/20 under one budget).
type Budget struct {
	Ratio, Reserve, Cap float64

	mu       sync.Mutex // guards accounts (not their balances: atomic)
	accounts map[string]*Account
}

// Account is one service's balance in a Budget (Budget.Account): a caller
// may keep it (the agent, with its view of the service) and deposit into
// it without looking it up. Its balance changes by compare-and-swap: a
// request to a service whose account is full (most of them: Cap is 500
// requests without a retry) deposits with one atomic load.
type Account struct {
	b    *Budget
	bits atomic.Uint64 // the balance's float64 bits
}

// NewBudget returns fogmesh's budget: 20% of requests, a reserve of 10
// retries, at most 100 saved.
func NewBudget() *Budget { return &Budget{Ratio: 0.2, Reserve: 10, Cap: 100} }

// Deposit records one request to svc.
func (b *Budget) Deposit(svc string) { b.Account(svc).Deposit() }

// Withdraw takes one retry from svc's account; false if it has none.
func (b *Budget) Withdraw(svc string) bool { return b.Account(svc).Withdraw() }

// Account returns svc's account, with Reserve when it is new. Once Forget
// dropped it, an account kept by a caller is no longer svc's: the next
// Account(svc) starts a new one.
func (b *Budget) Account(svc string) *Account {
	b.mu.Lock()
	defer b.mu.Unlock()
	t := b.accounts[svc]
	if t == nil {
		if b.accounts == nil {
			b.accounts = map[string]*Account{}
		}
		t = &Account{b: b}
		t.bits.Store(math.Float64bits(b.Reserve))
		b.accounts[svc] = t
	}
	return t
}

// Deposit records one request to the account's service.
func (t *Account) Deposit() {
	for {
		old := t.bits.Load()
		v := math.Float64frombits(old)
		nv := min(v+t.b.Ratio, t.b.Cap)
		if nv == v || t.bits.CompareAndSwap(old, math.Float64bits(nv)) {
			return // full: nothing to store
		}
	}
}

// Withdraw takes one retry from the account; false if it has none.
func (t *Account) Withdraw() bool {
	for {
		old := t.bits.Load()
		v := math.Float64frombits(old)
		if v < 1 {
			return false
		}
		if t.bits.CompareAndSwap(old, math.Float64bits(v-1)) {
			return true
		}
	}
}

// Forget drops the accounts of services keep rejects (services gone from
// the view), so the map stays as large as the mesh.
func (b *Budget) Forget(keep func(svc string) bool) {
	b.mu.Lock()
	for svc := range b.accounts {
		if !keep(svc) {
			delete(b.accounts, svc)
		}
	}
	b.mu.Unlock()
}
