package mask

import (
	"errors"
	"strings"
	"testing"

	"github.com/fogmesh/fogmesh/internal/api"
)

// TestDocumentValidation: a Service document whose egress mask does not
// compile is refused by api.Decode, naming the field, in every program
// that links the masker (it registers api.ValidateMask).
func TestDocumentValidation(t *testing.T) {
	doc := func(egress string) string {
		return "apiVersion: fogmesh.io/v1alpha1\nkind: Service\nmetadata: {name: s}\nspec:\n  ports: [{port: 80, protocol: http}]\n  egress:\n" + egress
	}
	for _, c := range []struct{ egress, field, reason string }{
		{"  - {name: a, when: {leavingSite: true}, mask: {detectors: [ssn]}}\n", "spec.egress[0].mask.detectors[0]", "not one of"},
		{"  - {name: a, when: {leavingSite: true}, mask: {regexes: [{name: r, pattern: '('}]}}\n", "spec.egress[0].mask.regexes[0].pattern", "missing closing )"},
		{"  - {name: a, when: {leavingSite: true}, mask: {jsonPaths: [{path: 'customer.name'}]}}\n", "spec.egress[0].mask.jsonPaths[0].path", `must start with "$"`},
		{"  - {name: a, when: {leavingSite: true}, mask: {jsonPaths: [{path: '$.a', action: hash}]}}\n", "spec.egress[0].mask.jsonPaths[0].action", "not mask or drop"},
		{"  - {name: a, when: {leavingSite: true}, mask: {headers: [{name: 'a b'}]}}\n", "spec.egress[0].mask.headers[0].name", "not a header name"},
		{"  - {name: a, when: {leavingSite: true}, mask: {keepFirst: 99}}\n", "spec.egress[0].mask.keepFirst", "not within"},
	} {
		_, err := api.Decode([]byte(doc(c.egress)))
		var fe *api.FieldError
		if !errors.As(err, &fe) || fe.Field != c.field || !strings.Contains(fe.Reason, c.reason) {
			t.Errorf("%s: got %v, want %s: …%s…", c.egress, err, c.field, c.reason)
		}
	}
}
