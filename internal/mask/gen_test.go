package mask

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/big"
	"math/rand/v2"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
)

// Test data is generated: identity numbers get a computed check
// character (and random birth dates and sequence numbers), cards a
// computed Luhn digit; none is a real person's.

// genID returns an 18-character identity number; valid false gives it a
// wrong check character.
func genID(r *rand.Rand, valid bool) string {
	provs := []string{"11", "31", "44", "51", "65"}
	d := fmt.Sprintf("%s%04d%04d%02d%02d%03d", provs[r.IntN(len(provs))], r.IntN(10000),
		1950+r.IntN(60), 1+r.IntN(12), 1+r.IntN(28), r.IntN(1000))
	c := IDCheckChar([]byte(d))
	if !valid {
		c = "0123456789X"[(strings.IndexByte("0123456789X", c)+1+r.IntN(10))%11]
	}
	return d + string(c)
}

// genCard returns an n-digit card number starting with prefix; valid
// false breaks its Luhn digit.
func genCard(r *rand.Rand, prefix string, n int, valid bool) string {
	b := []byte(prefix)
	for len(b) < n-1 {
		b = append(b, byte('0'+r.IntN(10)))
	}
	for c := byte('0'); c <= '9'; c++ {
		if luhn(append(b, c)) {
			if !valid {
				c = '0' + (c-'0'+1)%10
			}
			return string(append(b, c))
		}
	}
	panic("unreachable")
}

func genMobile(r *rand.Rand) string {
	return fmt.Sprintf("1%d%09d", 3+r.IntN(7), r.IntN(1e9))
}

// maskRun masks in with m, reading the body whole and one byte at a time;
// both must succeed or fail, and when they succeed, give the same output.
func maskRun(t testing.TB, m *Masker, kind Kind, in string) (string, map[string]int, error) {
	t.Helper()
	counts := map[string]int{}
	out, err := io.ReadAll(m.NewReader(strings.NewReader(in), kind, func(l string, n int) { counts[l] += n }))
	out1, err1 := io.ReadAll(m.NewReader(iotest.OneByteReader(strings.NewReader(in)), kind, nil))
	if (err == nil) != (err1 == nil) || err == nil && string(out) != string(out1) {
		t.Fatalf("input %.200q: whole read gave %.200q, %v; one byte at a time %.200q, %v", in, out, err, out1, err1)
	}
	return string(out), counts, err
}

// detectorsOnly finds what must not survive masking.
var detectorsOnly, _ = Compile(Config{Detectors: []string{DetectorCNID, DetectorCNMobile, DetectorBankCard}})

// checkProperty: valid JSON in, valid JSON out, and no detector match in
// any string, key or number of the output, nor in the exact value of a
// number (or of a string that is a number), however it is spelled: the
// output is read with encoding/json and json.Number, and values are
// computed with math/big, apart from the masker's own arithmetic.
func checkProperty(t testing.TB, in, out string) {
	t.Helper()
	if strings.HasPrefix(in, bom) { // passed on; encoding/json refuses it
		if !strings.HasPrefix(out, bom) {
			t.Fatalf("input %.300q lost its BOM: %.300q", in, out)
		}
		in, out = in[len(bom):], out[len(bom):]
	}
	if !json.Valid([]byte(in)) {
		return
	}
	if !json.Valid([]byte(out)) {
		t.Fatalf("valid input %.300q gave invalid output %.300q", in, out)
	}
	dec := json.NewDecoder(strings.NewReader(out))
	dec.UseNumber()
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("output %.300q: %v", out, err)
		}
		var s string
		switch v := tok.(type) {
		case string:
			s = v
		case json.Number:
			s = string(v)
		default:
			continue
		}
		if sp := detectorsOnly.findSpans(nil, []byte(s)); len(sp) > 0 {
			t.Fatalf("a %s survived in %.300q (input %.300q)", sp[0].label, s, in)
		}
		if v, ok := exactValue(s); ok {
			if sp := detectorsOnly.findSpans(nil, []byte(v)); len(sp) > 0 {
				t.Fatalf("a %s survived as the value %s of %.300q (input %.300q)", sp[0].label, v, s, in)
			}
			// What a float64 parser reads (strconv: apart from the
			// masker's math/big rounding).
			if f, err := strconv.ParseFloat(s, 64); err == nil && f == math.Trunc(f) && math.Abs(f) < 1<<53 {
				v := strconv.FormatFloat(f, 'f', -1, 64)
				if sp := detectorsOnly.findSpans(nil, []byte(v)); len(sp) > 0 {
					t.Fatalf("a %s survived as the float64 value %s of %.300q (input %.300q)", sp[0].label, v, s, in)
				}
			}
		}
	}
}

var jsonNumber = regexp.MustCompile(`^-?(0|[1-9][0-9]*)(\.([0-9]+))?([eE]([+-]?[0-9]+))?$`)

// exactValue returns the value of s, when it is a JSON number, in plain
// decimal notation, computed with math/big. Exponents beyond ±10000 are
// not expanded: with at most maxNumber digits written, their value has a
// run of more than 19 digits, which holds no detector match.
func exactValue(s string) (string, bool) {
	if s == "" || s[0] != '-' && !isDigit(s[0]) {
		return "", false
	}
	sm := jsonNumber.FindStringSubmatch(s)
	if sm == nil {
		return "", false
	}
	exp := 0
	if sm[5] != "" {
		digits := strings.TrimLeft(strings.TrimLeft(sm[5], "+-"), "0")
		if len(digits) > 5 {
			return "", false
		}
		exp, _ = strconv.Atoi("0" + digits)
		if exp > 10000 {
			return "", false
		}
		if strings.HasPrefix(sm[5], "-") {
			exp = -exp
		}
	}
	r, ok := new(big.Rat).SetString(s)
	if !ok {
		panic("big.Rat refused " + s)
	}
	if r.IsInt() {
		return r.Num().String(), true
	}
	v := r.FloatString(len(sm[3]) + max(0, -exp)) // exact: the value has no more decimals
	return strings.TrimRight(v, "0"), true
}
