package api

import (
	"errors"
	"os"
	"strings"
	"testing"
)

func egressDoc(egress string) string {
	return "apiVersion: fogmesh.io/v1alpha1\nkind: Service\nmetadata: {name: s}\nspec:\n  ports: [{port: 80, protocol: http}]\n  egress:\n" + egress
}

func TestEgressValidation(t *testing.T) {
	for _, c := range []struct{ egress, field, reason string }{
		{"  - {when: {leavingSite: true}}\n", "spec.egress[0].name", "required"},
		{"  - {name: a, when: {}}\n", "spec.egress[0].when", "one of"},
		{"  - {name: a, when: {toSites: [Bad]}}\n", "spec.egress[0].when.toSites[0]", "DNS label"},
		{"  - {name: a, when: {leavingSite: true}}\n  - {name: a, when: {leavingSite: true}}\n", "spec.egress[1].name", "duplicate"},
		{"  - {name: a, when: {leavingSite: true}, mask: {detectors: [ssn]}}\n", "spec.egress[0].mask.detectors[0]", "not one of"},
		{"  - {name: a, when: {leavingSite: true}, mask: {regexes: [{name: r, pattern: '('}]}}\n", "spec.egress[0].mask.regexes[0].pattern", "missing closing )"},
		{"  - {name: a, when: {leavingSite: true}, mask: {jsonPaths: [{path: 'customer.name'}]}}\n", "spec.egress[0].mask.jsonPaths[0].path", `must start with "$"`},
		{"  - {name: a, when: {leavingSite: true}, mask: {jsonPaths: [{path: '$.a', action: hash}]}}\n", "spec.egress[0].mask.jsonPaths[0].action", "not mask or drop"},
		{"  - {name: a, when: {leavingSite: true}, mask: {headers: [{name: 'a b'}]}}\n", "spec.egress[0].mask.headers[0].name", "not a header name"},
		{"  - {name: a, when: {leavingSite: true}, mask: {keepFirst: 99}}\n", "spec.egress[0].mask.keepFirst", "not within"},
		{"  - {name: a, when: {leavingSite: true}, mask: {detectors: [cn-id], typo: 1}}\n", "spec.egress.mask.typo", "unknown field"},
	} {
		_, err := Decode([]byte(egressDoc(c.egress)))
		var fe *FieldError
		if !errors.As(err, &fe) || !strings.HasSuffix(fe.Field, strings.TrimPrefix(c.field, "spec.egress.mask.")) || !strings.Contains(fe.Reason, c.reason) {
			t.Errorf("%s: got %v, want %s: …%s…", c.egress, err, c.field, c.reason)
		}
	}
}

// TestEgressExample decodes examples/egress-masking.yaml.
func TestEgressExample(t *testing.T) {
	b, err := os.ReadFile("../../examples/egress-masking.yaml")
	if err != nil {
		t.Fatal(err)
	}
	objs, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	s := objs[0].(*Service)
	if r := s.Spec.Egress[0]; r.Name != "cloud-pii" || !r.When.LeavingSite || len(r.Mask.Detectors) != 3 || r.Mask.JSONPaths[1].Path != "$.items[*].card" || r.Mask.KeepLast != 4 {
		t.Fatalf("%+v", s.Spec.Egress)
	}
}
