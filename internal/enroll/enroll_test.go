package enroll

import (
	"errors"
	"strings"
	"testing"

	"github.com/fogmesh/fogmesh/internal/identity"
)

// TestParseTokenKind: an agent takes only join tokens, a relay only relay
// tokens, a regional control plane only region tokens; the wrong kind is
// refused naming the command it is for.
func TestParseTokenKind(t *testing.T) {
	pin := strings.Repeat("ab", 32)
	join, _ := identity.NewToken(identity.TokenJoin, pin)
	rel, _ := identity.NewToken(identity.TokenRelay, pin)
	adm, _ := identity.NewToken(identity.TokenAdmin, "")
	reg, _ := identity.NewToken(identity.TokenRegion, pin)
	for _, c := range []struct {
		tok, want, errHas string
	}{
		{join.String(), identity.TokenJoin, ""},
		{rel.String(), identity.TokenRelay, ""},
		{rel.String(), identity.TokenJoin, "this is a relay token"},
		{join.String(), identity.TokenRelay, "not a relay token"},
		{adm.String(), identity.TokenRelay, "admin tokens cannot join"},
		{"fmr1.nope", identity.TokenRelay, "bad token"},
		{reg.String(), identity.TokenRegion, ""},
		{reg.String(), identity.TokenJoin, "this is a region token (for fogmesh control --mode regional"},
		{join.String(), identity.TokenRegion, "not a region token; make one on the global control plane"},
		{rel.String(), identity.TokenRegion, "this is a relay token"},
	} {
		tok, err := ParseToken(c.tok, c.want)
		if c.errHas == "" {
			if err != nil || tok.Kind != c.want {
				t.Errorf("%s as %s: %v %+v", c.tok, c.want, err, tok)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.errHas) {
			t.Errorf("%s as %s: err %v, want it to say %q", c.tok, c.want, err, c.errHas)
		}
		if c.errHas == "bad token" && !errors.Is(err, identity.ErrBadToken) {
			t.Errorf("malformed: %v does not wrap ErrBadToken", err)
		}
	}
}
