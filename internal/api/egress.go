package api

import (
	"errors"
	"fmt"
)

// EgressRule masks personal data in the requests a service's clients send
// to endpoints that When selects (issue 5: data masking at the edge). It
// applies on http, http2 and grpc ports, in the agent of the client's
// node, before the request leaves it; the first rule that matches the
// chosen endpoint applies.
type EgressRule struct {
	Name string     `json:"name"`
	When EgressWhen `json:"when"`
	// Mask says what to mask: see MaskConfig.
	Mask MaskConfig `json:"mask"`
}

// EgressWhen selects endpoints by where they run, relative to the client's
// node; any one condition that holds selects. An endpoint whose site or
// region is unknown (a static endpoint without them) counts as leaving
// both.
type EgressWhen struct {
	LeavingSite   bool     `json:"leavingSite,omitempty"`   // another site (or region)
	LeavingRegion bool     `json:"leavingRegion,omitempty"` // another region
	ToRegions     []string `json:"toRegions,omitempty"`     // one of these regions
	ToSites       []string `json:"toSites,omitempty"`       // one of these sites
}

func validateEgress(rules []EgressRule) error {
	names := map[string]bool{}
	for i := range rules {
		r := &rules[i]
		f := fmt.Sprintf("spec.egress[%d]", i)
		if err := validName(f+".name", r.Name); err != nil {
			return err
		}
		if names[r.Name] {
			return fieldErr(f+".name", "duplicate rule %q", r.Name)
		}
		names[r.Name] = true
		w := r.When
		if !w.LeavingSite && !w.LeavingRegion && len(w.ToRegions) == 0 && len(w.ToSites) == 0 {
			return fieldErr(f+".when", "one of leavingSite, leavingRegion, toRegions or toSites is required")
		}
		for j, s := range w.ToRegions {
			if err := validName(fmt.Sprintf("%s.when.toRegions[%d]", f, j), s); err != nil {
				return err
			}
		}
		for j, s := range w.ToSites {
			if err := validName(fmt.Sprintf("%s.when.toSites[%d]", f, j), s); err != nil {
				return err
			}
		}
		if ValidateMask == nil {
			continue
		}
		if err := ValidateMask(r.Mask); err != nil {
			var fe interface{ MaskField() (field, reason string) }
			if errors.As(err, &fe) {
				field, reason := fe.MaskField()
				return fieldErr(f+".mask."+field, "%s", reason)
			}
			return fieldErr(f+".mask", "%v", err)
		}
	}
	return nil
}
