package enroll

import (
	"errors"
	"strings"
	"testing"

	"github.com/fogmesh/fogmesh/internal/identity"
)

// FuzzParseToken: a token a member is given (flag, file, environment)
// is taken only for the kind of member it is for, with the root pin the
// join verifies the control plane by, and reads back the same; a refusal
// of a well-formed token of another kind names the kind, a malformed one
// wraps identity.ErrBadToken.
func FuzzParseToken(f *testing.F) {
	pin := strings.Repeat("ab", 32)
	for _, k := range []string{identity.TokenJoin, identity.TokenRelay, identity.TokenRegion, identity.TokenAdmin} {
		tok, _ := identity.NewToken(k, pin)
		for w := range 4 {
			f.Add(tok.String(), uint8(w))
		}
	}
	f.Add("fmr1.nope", uint8(1))
	f.Add(" fmj1.0123456789ab.0123456789abcdef0123456789abcdef."+pin+"\n", uint8(0))
	f.Add("fmj1.0123456789ab.0123456789abcdef0123456789abcdef."+strings.ToUpper(pin), uint8(0))
	f.Fuzz(func(t *testing.T, s string, w uint8) {
		// The kinds that join: an agent, a relay, a regional control plane.
		want := []string{identity.TokenJoin, identity.TokenRelay, identity.TokenRegion}[w%3]
		tok, err := ParseToken(s, want)
		if err != nil {
			p, perr := identity.ParseToken(s)
			switch {
			case perr != nil && !errors.Is(err, identity.ErrBadToken):
				t.Fatalf("malformed %q: %v does not wrap ErrBadToken", s, err)
			case perr == nil && p.Kind == want:
				t.Fatalf("%q, a %s token, refused as one: %v", s, want, err)
			case perr == nil && !strings.Contains(err.Error(), p.Kind):
				t.Fatalf("%q refused without naming its kind %s: %v", s, p.Kind, err)
			}
			return
		}
		if tok.Kind != want {
			t.Fatalf("%q taken as a %s token to join as %s", s, tok.Kind, want)
		}
		if len(tok.Pin) != 64 || strings.Trim(tok.Pin, "0123456789abcdef") != "" {
			t.Fatalf("%q joins with no root pin to verify the control plane by: %q", s, tok.Pin)
		}
		if back, err := ParseToken(tok.String(), want); err != nil || back != tok {
			t.Fatalf("%q does not read back: %+v %v", s, back, err)
		}
	})
}
