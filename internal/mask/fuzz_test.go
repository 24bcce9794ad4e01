package mask

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"math/big"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
)

// FuzzJSONScanner: no input panics the scanner; valid JSON in gives valid
// JSON out with no detector match left in it, whatever the read sizes.
func FuzzJSONScanner(f *testing.F) {
	for _, s := range []string{
		`{"customer":{"name":"张三","idNumber":"11010519491231002X","token":"t"},"items":[{"card":"6222021234567890123","note":"call 13812345678"}],"tags":["a","b"]}`,
		`[13812345678,4111111111111111,"+86 139-1234-5678","\u0031\u0033\u0038\u0031\u0032\u0033\u0034\u0035\u0036\u0037\u0038"]`,
		`{"13812345678":{"odd key":{"a":[1,2,{"b":null}]}},"e":"EMP-123456","x":-1.5e-3}`,
		"{\"a\":\"\\ud83d\\ude00\\ud800x\\\"\\\\\"}\n{\"b\":true}\n",
		`{"a":`, `[1,]`, `{"a":01}`, `"\u12`, "[\"\x01\"]", `{}x`, ``, ` `, `tru`, `[[[[[[`,
		`{"customer":{"token":{"deep":["13812345678"]}},"tags":[0,1,2]}`,
		`"` + strings.Repeat("13812345678 é\\n", 400) + `"`,
		`{"p":"１３８－１２３４－５６７８","q":"١٣٨١٢٣٤٥٦٧٨","r":"\uff11\uff13\uff18\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18"}`,
		"\xef\xbb\xbf{\"n\":1.3812345678e10,\"s\":\"4.111111111111111E15\"}",
	} {
		f.Add([]byte(s), uint8(0))
	}
	cfg := testConfig()
	reject := mustCompile(f, cfg)
	cfg.OnMalformed, cfg.MaxTokenBytes = "pass", 4096
	pass := mustCompile(f, cfg)
	f.Fuzz(func(t *testing.T, in []byte, chunk uint8) {
		read := func(m *Masker) ([]byte, error) {
			var src io.Reader = bytes.NewReader(in)
			if chunk%4 == 1 {
				src = iotest.OneByteReader(src)
			} else if chunk%4 == 2 {
				src = iotest.HalfReader(src)
			}
			return io.ReadAll(m.NewReader(src, KindJSON, nil))
		}
		valid := json.Valid(in)
		out, err := read(reject)
		if valid && err != nil {
			t.Fatalf("valid input %q: %v", in, err)
		}
		if err == nil {
			checkProperty(t, string(in), string(out))
		}
		out, err = read(pass)
		if err != nil {
			t.Fatalf("pass: %v", err)
		}
		checkProperty(t, string(in), string(out))
	})
}

// FuzzNumberSpelling: a mobile, card or identity number written as a JSON
// number (or a string holding one) in any spelling of its value (leading
// and trailing zeros, a decimal point anywhere, e or E, an exponent with
// or without sign and leading zeros, negative) never leaves unmasked.
func FuzzNumberSpelling(f *testing.F) {
	// kind (mobile, card, identity), seed, point, leading zeros, trailing
	// zeros, flags (spell's).
	f.Add(uint8(0), uint64(1), uint8(1), uint8(0), uint8(0), uint8(0))   // 1.7089111778e10
	f.Add(uint8(1), uint64(2), uint8(1), uint8(0), uint8(0), uint8(1))   // -3.32…e17
	f.Add(uint8(0), uint64(3), uint8(20), uint8(0), uint8(1), uint8(0))  // 1490742.94010e4
	f.Add(uint8(1), uint64(4), uint8(0), uint8(3), uint8(0), uint8(6))   // 0.000…E+NN
	f.Add(uint8(2), uint64(5), uint8(5), uint8(2), uint8(4), uint8(255)) // -…E+0NN
	f.Add(uint8(0), uint64(6), uint8(11), uint8(0), uint8(9), uint8(16)) // …000000000e-9
	f.Add(uint8(0), uint64(7), uint8(11), uint8(0), uint8(1), uint8(2))  // ….0e0
	f.Add(uint8(1), uint64(8), uint8(0), uint8(0), uint8(0), uint8(64))  // 4…0.999999999999
	m := mustCompile(f, Config{Detectors: allDetectors, KeepFirst: 3, KeepLast: 4})
	f.Fuzz(func(t *testing.T, kind uint8, seed uint64, point, zl, zt, flags uint8) {
		r := rand.New(rand.NewPCG(seed, seed>>32))
		var d string
		switch kind % 3 {
		case 0:
			d = genMobile(r)
		case 1:
			d = genCard(r, []string{"4", "51", "62", "3"}[r.IntN(4)], 13+r.IntN(7), true)
		default:
			if d = genID(r, true); strings.HasSuffix(d, "X") {
				d = genMobile(r) // an X is no digit
			}
		}
		if detectorsOnly.findSpans(nil, []byte(d)) == nil {
			t.Fatalf("generated %s is not detected", d)
		}
		num := spell(d, int(point), int(zl%40), int(zt%40), flags)
		if flags&64 != 0 && len(d) <= 16 {
			// Just below d: a float64 parser rounds it to d.
			below, _ := new(big.Int).SetString(d, 10)
			num = below.Sub(below, big.NewInt(1)).String() + "." + strings.Repeat("9", 12+int(zt%8))
			d = strconv.FormatFloat(mustFloat(num), 'f', -1, 64)
		}
		if !jsonNumber.MatchString(num) {
			t.Fatalf("spelled %s as %q, no JSON number", d, num)
		}
		if v, ok := exactValue(num); !ok || strings.TrimPrefix(v, "-") != d && flags&64 == 0 {
			t.Fatalf("spelled %s as %q, whose value is %s", d, num, v)
		}
		for _, in := range []string{`{"v":` + num + `}`, `[1,` + num + `]`, num, `{"s":"` + num + `"}`} {
			out, _, err := maskRun(t, m, KindJSON, in)
			if err != nil {
				t.Fatalf("%s: %v", in, err)
			}
			if out == in {
				t.Fatalf("%s (%s) passed unmasked", in, d)
			}
			checkProperty(t, in, out)
		}
	})
}

// spell writes the digits d as a JSON number of the same value: zl leading
// and zt trailing zeros, the point after point%(len+1) of those digits, and
// the exponent that makes up for them; flags choose e or E, '+', leading
// zeros in the exponent, a minus sign, and whether a zero exponent is
// written.
func spell(d string, point, zl, zt int, flags uint8) string {
	m := strings.Repeat("0", zl) + d + strings.Repeat("0", zt)
	q := point % (len(m) + 1)
	exp := len(m) - q - zt // m with its point after q digits, times 10^exp, is d
	intPart, frac := strings.TrimLeft(m[:q], "0"), m[q:]
	if intPart == "" {
		intPart = "0"
	}
	var b strings.Builder
	if flags&1 != 0 {
		b.WriteByte('-')
	}
	b.WriteString(intPart)
	if frac != "" {
		b.WriteString("." + frac)
	}
	if exp != 0 || flags&2 != 0 {
		b.WriteByte("eE"[flags>>2&1])
		switch {
		case exp < 0:
			b.WriteByte('-')
		case flags&8 != 0:
			b.WriteByte('+')
		}
		b.WriteString(strings.Repeat("0", int(flags>>4&3)))
		b.WriteString(strconv.Itoa(max(exp, -exp)))
	}
	return b.String()
}

func mustFloat(s string) float64 {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		panic(err)
	}
	return f
}

// FuzzCompressed: a compressed body (onCompressed: decode) never panics
// the decoder; when it is gzip of valid JSON, what comes out is gzip of
// valid JSON with nothing a detector flags.
func FuzzCompressed(f *testing.F) {
	gz := func(s string) []byte {
		var b bytes.Buffer
		w := gzip.NewWriter(&b)
		w.Write([]byte(s))
		w.Close()
		return b.Bytes()
	}
	for _, s := range []string{`{"p":1.3812345678e10}`, `["１３８１２３４５６７８"]`, ``, `{`} {
		f.Add(gz(s), false)
		f.Add([]byte(s), true)
	}
	f.Add(gz(`[1]`)[:10], false)
	m := mustCompile(f, Config{Detectors: allDetectors, OnCompressed: "decode"})
	f.Fuzz(func(t *testing.T, in []byte, wrap bool) {
		if wrap {
			in = gz(string(in))
		}
		out, err := io.ReadAll(m.NewReader(iotest.HalfReader(bytes.NewReader(in)), KindJSON|kindGzip, nil))
		if err != nil {
			return
		}
		zr, err := gzip.NewReader(bytes.NewReader(in))
		if err != nil {
			return
		}
		plain, err := io.ReadAll(zr)
		if err != nil {
			return
		}
		if len(out) == 0 {
			if len(in) != 0 {
				t.Fatalf("gzip of %q gave no output", plain)
			}
			return
		}
		zr, err = gzip.NewReader(bytes.NewReader(out))
		if err != nil {
			t.Fatalf("output is no gzip: %v", err)
		}
		masked, err := io.ReadAll(zr)
		if err != nil {
			t.Fatalf("output is no gzip: %v", err)
		}
		checkProperty(t, string(plain), string(masked))
	})
}
