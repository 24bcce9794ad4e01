package balance

import (
	"math"
	"testing"
)

// TestDecayMatchesExp: the EWMA's decay factor equals math.Exp(-t) to
// within two units in the last place, on both sides of the range where
// it takes the polynomial (|t| < 2⁻¹⁰), negative t included (a sample
// read before the last one observed, on another goroutine).
func TestDecayMatchesExp(t *testing.T) {
	ts := []float64{0, 1e-12, 1e-9, 1e-6, 2e-5, 1e-4, 5e-4, 0x1p-10, math.Nextafter(0x1p-10, 0), 2e-3, 0.01, 0.5, 1, 7}
	for i := range 2000 {
		ts = append(ts, float64(i)*0x1p-10/1000) // through the polynomial's range
	}
	for _, x := range ts {
		for _, v := range []float64{x, -x} {
			got, want := decay(v), math.Exp(-v)
			if d := math.Abs(got - want); d > 2*(math.Nextafter(want, math.Inf(1))-want) {
				t.Fatalf("decay(%g) = %.17g, math.Exp(%g) = %.17g: %g apart", v, got, -v, want, d)
			}
		}
	}
}
