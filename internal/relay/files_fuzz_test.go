package relay

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/wire"
)

// FuzzParseDenyList: a relay's deny file (an operator's list, or an
// agent's trust.json) yields only canonical SPIFFE IDs, that read back
// the same in either form; a trust.json denies exactly the IDs of its
// "revoked" list, each of which must be one ID (an entry is not parsed as
// lines and comments: "spiffe://td/a#b" is not a revocation of
// spiffe://td/a).
func FuzzParseDenyList(f *testing.F) {
	for _, s := range []string{
		"",
		"# c\nspiffe://fogmesh.local/site/a/node/x # revoked 2026-12-03\n\n  spiffe://fogmesh.local/site/b/node/y\n",
		`{"trustDomain":"fogmesh.local","bundles":{},"revoked":["spiffe://fogmesh.local/site/a/node/x"]}`,
		`{"revoked":["spiffe://fogmesh.local/site/a/node/x # not a comment"]}`,
		`{"revoked":["spiffe://fogmesh.local/a\nspiffe://fogmesh.local/b"]}`,
		`{"revoked":["",""]}`,
		"node-x\n", `{"revoked":[1]}`, "spiffe://A/b\r\n", "{",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ids, err := ParseDenyList(b)
		if err != nil {
			return
		}
		for _, id := range ids {
			p, err := spiffeid.FromString(id)
			if err != nil || p.String() != id {
				t.Fatalf("denied %q, not a canonical SPIFFE ID (%v)", id, err)
			}
		}
		lines, err := ParseDenyList([]byte(strings.Join(ids, "\n")))
		if err != nil || !slices.Equal(lines, ids) {
			t.Fatalf("%q as lines read back as %q, %v", ids, lines, err)
		}
		js, _ := json.Marshal(wire.Trust{Revoked: ids})
		back, err := ParseDenyList(js)
		if err != nil || !slices.Equal(back, ids) && len(ids) > 0 {
			t.Fatalf("%q as trust JSON read back as %q, %v", ids, back, err)
		}
		if tb := bytes.TrimSpace(b); len(tb) > 0 && tb[0] == '{' {
			var tr wire.Trust
			json.Unmarshal(tb, &tr)
			if !slices.Equal(tr.Revoked, ids) && (len(tr.Revoked) > 0 || len(ids) > 0) {
				t.Fatalf("trust JSON revoking %q denies %q", tr.Revoked, ids)
			}
		}
	})
}
