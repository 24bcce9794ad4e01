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

// TestEgressValidation checks the document's shape; the mask rules
// themselves are checked by internal/mask through ValidateMask
// (mask.TestDocumentValidation).
func TestEgressValidation(t *testing.T) {
	for _, c := range []struct{ egress, field, reason string }{
		{"  - {when: {leavingSite: true}}\n", "spec.egress[0].name", "required"},
		{"  - {name: a, when: {}}\n", "spec.egress[0].when", "one of"},
		{"  - {name: a, when: {toSites: [Bad]}}\n", "spec.egress[0].when.toSites[0]", "DNS label"},
		{"  - {name: a, when: {leavingSite: true}}\n  - {name: a, when: {leavingSite: true}}\n", "spec.egress[1].name", "duplicate"},
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
