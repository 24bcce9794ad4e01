package mask

import (
	"bytes"
	"compress/gzip"
	"compress/zlib"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"unicode"
)

// Issue 9, finding 7: personal data left a site unmasked because of how
// a request spelled it. Each case here was a bypass.

// TestNumberSpellings: a mobile or card number written as a JSON number is
// masked whatever the number's spelling (its exact value decides).
func TestNumberSpellings(t *testing.T) {
	m := mustCompile(t, Config{Detectors: allDetectors, KeepFirst: 3, KeepLast: 4})
	const phone, card = "138****5678", "411*********1111"
	for _, c := range []struct{ in, want string }{
		// From the issue.
		{`1.3812345678e10`, `"` + phone + `"`},
		{`4.111111111111111E15`, `"` + card + `"`},
		// The same values, spelled otherwise.
		{`1.3812345678E10`, `"` + phone + `"`},
		{`1.3812345678E+10`, `"` + phone + `"`},
		{`1.3812345678e+010`, `"` + phone + `"`},
		{`13812345678.0`, `"` + phone + `"`},
		{`13812345678.000e0`, `"` + phone + `"`},
		{`13812345678e0`, `"` + phone + `"`},
		{`138123456780e-1`, `"` + phone + `"`},
		{`1381234567800000000000E-11`, `"` + phone + `"`},
		{`0.13812345678e11`, `"` + phone + `"`},
		{`0.0000013812345678e16`, `"` + phone + `"`},
		{`1381234567.8E1`, `"` + phone + `"`},
		{`-1.3812345678e10`, `"-` + phone + `"`},
		{`41111111111111110e-1`, `"` + card + `"`},
		{`0.4111111111111111e16`, `"` + card + `"`},
		// A value with a fraction: its integer part is still a number.
		{`1.38123456785e10`, `"` + phone + `.5"`},
		{`13812345678.5`, `"` + phone + `.5"`},
		// Not personal data: unchanged.
		{`1.3812345678e11`, `1.3812345678e11`},
		{`1.5e3`, `1.5e3`},
		{`1e400`, `1e400`},
		{`1e-400`, `1e-400`},
		{`0e99999999999999999999`, `0e99999999999999999999`},
		{`-0.0`, `-0.0`},
		{`1700000000000`, `1700000000000`},
		// What looks like personal data as written is masked as written
		// (as before), though its value is not.
		{`13812345678e99999999999999999999`, `"138****5678e99999999999999999999"`},
		{`13812345678e5`, `"138****5678e5"`},
		// What a float64 parser (JavaScript, Python's float) reads as the
		// card: 4111111111111110.9999999999 rounds to 4111111111111111.
		{`4111111111111110.9999999999`, `"` + card + `"`},
		{`4.1111111111111109e15`, `"` + card + `"`},
		{`-411111111111.11109999999999e4`, `"-` + card + `"`},
		{`1234567890.5`, `1234567890.5`},
		{`4111111111111110.5`, `4111111111111110.5`},
		// A string that is a number, spelled as one.
		{`" 1.3812345678e10\n"`, `"` + phone + `"`},
		{`"+1.3812345678e10"`, `"` + phone + `"`},
		{`"4111111111111110.9999999999"`, `"` + card + `"`},
		{`"1.3812345678e10"`, `"` + phone + `"`},
		{`"4.111111111111111E15"`, `"` + card + `"`},
		{`"1e5"`, `"1e5"`},
	} {
		in := `{"v":` + c.in + `,"a":[` + c.in + `]}`
		want := `{"v":` + c.want + `,"a":[` + c.want + `]}`
		out, _, err := maskRun(t, m, KindJSON, in)
		if err != nil || out != want {
			t.Errorf("%s: got %s, %v; want %s", c.in, out, err, want)
		}
		checkProperty(t, in, out)
		// At the top level too (the number ends with the body).
		if out, _, err := maskRun(t, m, KindJSON, c.in); err != nil || out != c.want {
			t.Errorf("top-level %s: got %s, %v; want %s", c.in, out, err, c.want)
		}
	}
}

func TestPlainDecimal(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"0", "0"}, {"-0", "0"}, {"0.000", "0"}, {"0e5", "0"}, {"12", "12"}, {"-12", "-12"},
		{"1.5", "1.5"}, {"1.50", "1.5"}, {"1.5e1", "15"}, {"1.5e-1", "0.15"}, {"15e-3", "0.015"},
		{"1E+2", "100"}, {"100e-2", "1"}, {"123.456e1", "1234.56"}, {"-0.001e3", "-1"},
		{"1e0000000000000000000003", "1000"}, {"1e-0000000000000000000003", "0.001"},
	} {
		got, ok := plainDecimal(nil, []byte(c.in))
		if !ok || string(got) != c.want {
			t.Errorf("%s: got %q, %v; want %q", c.in, got, ok, c.want)
		}
	}
	// Values whose plain form is a run of more than 19 digits cannot hold
	// a detector match: they are not expanded.
	for _, in := range []string{"1e100", "1e-100", "1e99999999999999", "123e-99999999999"} {
		if got, ok := plainDecimal(nil, []byte(in)); ok {
			t.Errorf("%s: expanded to %.40q", in, got)
		}
	}
}

// TestByteOrderMark: a UTF-8 BOM (RFC 8259 §8.1 lets parsers ignore it) is
// passed on and the JSON after it is masked. It made the scanner see
// malformed JSON, which onMalformed: pass sent on unmasked.
func TestByteOrderMark(t *testing.T) {
	const bom = "\xef\xbb\xbf"
	for _, policy := range []string{"reject", "pass"} {
		m := mustCompile(t, Config{Detectors: allDetectors, KeepFirst: 3, KeepLast: 4, OnMalformed: policy})
		for _, c := range []struct{ in, want string }{
			{bom + `{"p":"13812345678","n":13812345678}`, bom + `{"p":"138****5678","n":"138****5678"}`},
			{bom + " [1]", bom + " [1]"},
			{bom, bom},
		} {
			out, _, err := maskRun(t, m, KindJSON, c.in)
			if err != nil || out != c.want {
				t.Errorf("%s: %q: got %q, %v; want %q", policy, c.in, out, err, c.want)
			}
		}
		// A BOM anywhere else, or a broken one, is malformed.
		for _, in := range []string{"\xef\xbb{}", "\xef{}", `[1]` + bom, bom + bom + `{}`, "\xef\xbb"} {
			out, _, err := maskRun(t, m, KindJSON, in)
			if policy == "reject" && !errors.Is(err, ErrMalformed) || policy == "pass" && (err != nil || out != in) {
				t.Errorf("%s: %q: got %q, %v", policy, in, out, err)
			}
		}
	}
}

// TestClassifyRobust: the media type decides, however the header spells
// it; a request that says two things is refused.
func TestClassifyRobust(t *testing.T) {
	def := mustCompile(t, Config{Detectors: allDetectors})
	star := mustCompile(t, Config{Detectors: allDetectors, ContentTypes: []string{"*"}})
	text := mustCompile(t, Config{Detectors: allDetectors, ContentTypes: []string{"text/*"}})
	for _, c := range []struct {
		m       *Masker
		h       http.Header
		want    Kind
		wantErr error
	}{
		// From the issue: an invalid parameter made the type the raw string.
		{def, http.Header{"Content-Type": {"application/json; charset"}}, KindJSON, nil},
		{def, http.Header{"Content-Type": {"application/json; charset=\"utf-8"}}, KindJSON, nil},
		{def, http.Header{"Content-Type": {"application/json;;"}}, KindJSON, nil},
		{def, http.Header{"Content-Type": {" Application/JSON ; x"}}, KindJSON, nil},
		{def, http.Header{"Content-Type": {"application/problem+json; =x"}}, KindJSON, nil},
		// From the issue: only the first of two Content-Type fields was read.
		{def, http.Header{"Content-Type": {"text/plain", "application/json"}}, KindPass, ErrContentType},
		{def, http.Header{"Content-Type": {"application/json", "application/json"}}, KindPass, ErrContentType},
		{def, http.Header{"Content-Type": {"text/plain, application/json"}}, KindPass, ErrContentType},
		{def, http.Header{"Content-Type": {"text/plain", "application/json"}, "content-type": {"x"}}, KindPass, ErrContentType},
		{def, http.Header{"content-type": {"application/json"}}, KindJSON, nil},
		// Not a media type: refused rather than guessed.
		{def, http.Header{"Content-Type": {"application json"}}, KindPass, ErrContentType},
		{def, http.Header{"Content-Type": {"json"}}, KindPass, ErrContentType},
		{def, http.Header{"Content-Type": {"application/json x"}}, KindPass, ErrContentType},
		// A charset the scanner cannot read digits in.
		{def, http.Header{"Content-Type": {"application/json; charset=UTF-16"}}, KindPass, ErrContentType},
		// Other spellings of it (iconv-lite, Python and Java read them all).
		{def, http.Header{"Content-Type": {"application/json; charset=UTF_16LE"}}, KindPass, ErrContentType},
		{def, http.Header{"Content-Type": {"application/json; charset=utf16"}}, KindPass, ErrContentType},
		{def, http.Header{"Content-Type": {"application/json; charset=ucs2"}}, KindPass, ErrContentType},
		{def, http.Header{"Content-Type": {"application/json; charset=unicode"}}, KindPass, ErrContentType},
		{def, http.Header{"Content-Type": {"application/json; charset=UTF_8"}}, KindJSON, nil},
		{def, http.Header{"Content-Type": {"application/json; charset=GBK"}}, KindJSON, nil},
		{def, http.Header{"Content-Type": {"application/json; charset=utf-8"}}, KindJSON, nil},
		// JSON under its other names.
		{def, http.Header{"Content-Type": {"text/json"}}, KindJSON, nil},
		{def, http.Header{"Content-Type": {"application/x-json"}}, KindJSON, nil},
		{def, http.Header{"Content-Type": {"application/x-ndjson"}}, KindJSON, nil},
		{def, http.Header{"Content-Type": {"application/jsonl"}}, KindJSON, nil},
		{def, http.Header{"Content-Type": {"application/vnd.x+json"}}, KindJSON, nil},
		{text, http.Header{"Content-Type": {"text/json"}}, KindJSON, nil},
		// No Content-Type: the body is sniffed.
		{def, http.Header{}, KindSniff, nil},
		{def, http.Header{"Content-Type": {""}}, KindSniff, nil},
		{star, http.Header{}, KindSniffText, nil},
		{def, http.Header{"Content-Type": {"text/plain"}}, KindPass, nil},
		{def, http.Header{"Content-Type": {"multipart/form-data; boundary=x"}}, KindPass, nil},
		{def, http.Header{"Content-Type": {"application/grpc+json"}}, KindPass, nil},
		// Every Content-Encoding field and coding counts.
		{def, http.Header{"Content-Type": {"application/json"}, "Content-Encoding": {"identity", "gzip"}}, KindPass, ErrCompressed},
		{def, http.Header{"Content-Type": {"application/json"}, "Content-Encoding": {"identity, br"}}, KindPass, ErrCompressed},
		{def, http.Header{"Content-Type": {"application/json"}, "Content-Encoding": {"Identity"}}, KindJSON, nil},
		{def, http.Header{"Content-Encoding": {"gzip"}}, KindPass, ErrCompressed},
		{def, http.Header{"Content-Type": {"text/plain"}, "Content-Encoding": {"gzip"}}, KindPass, nil},
	} {
		k, err := c.m.Classify(c.h)
		if k != c.want || c.wantErr == nil && err != nil || c.wantErr != nil && !errors.Is(err, c.wantErr) {
			t.Errorf("%v: got %v, %v; want %v, %v", c.h, k, err, c.want, c.wantErr)
		}
	}
}

// TestSniff: a body without Content-Type is scanned as JSON when it starts
// like JSON.
func TestSniff(t *testing.T) {
	m := mustCompile(t, Config{Detectors: allDetectors, KeepFirst: 3, KeepLast: 4})
	for _, c := range []struct {
		kind    Kind
		in, out string
	}{
		{KindSniff, `{"p":1.3812345678e10}`, `{"p":"138****5678"}`},
		{KindSniff, " \r\n\t[\"13812345678\"]", " \r\n\t[\"138****5678\"]"},
		{KindSniff, "\xef\xbb\xbf{\"p\":13812345678}", "\xef\xbb\xbf{\"p\":\"138****5678\"}"},
		{KindSniff, `tel 13812345678`, `tel 13812345678`},
		{KindSniff, ``, ``},
		{KindSniff, `   `, `   `},
		{KindSniffText, `tel 13812345678`, `tel 138****5678`},
		{KindSniffText, `{"p":1.3812345678e10}`, `{"p":"138****5678"}`},
	} {
		out, _, err := maskRun(t, m, c.kind, c.in)
		if err != nil || out != c.out {
			t.Errorf("%v %q: got %q, %v; want %q", c.kind, c.in, out, err, c.out)
		}
	}
	if _, _, err := maskRun(t, m, KindSniff, `{"p":13812345678`); !errors.Is(err, ErrMalformed) {
		t.Errorf("sniffed JSON that ends early: %v", err)
	}
	// UTF-16/32 JSON without Content-Type: Python's json.loads(bytes)
	// reads it; the masker cannot, so it is refused, not passed.
	for _, in := range []string{"\xff\xfe{\x00\"\x00p\x00\"\x00", "\xfe\xff\x00{\x00\"", "\x00\x00\x00{\x00\x00\x00\"", " \x00{"} {
		if out, _, err := maskRun(t, m, KindSniff, in); !errors.Is(err, ErrContentType) {
			t.Errorf("UTF-16/32 body %q without Content-Type: got %q, %v; want refused", in, out, err)
		}
	}
}

// TestMaskHeaderSpellings: a header rule applies to every spelling a
// backend may read as the same header (case, '_' for '-': CGI and WSGI
// map both to HTTP_X_USER_PHONE).
func TestMaskHeaderSpellings(t *testing.T) {
	m := mustCompile(t, Config{Detectors: allDetectors, KeepFirst: 3, KeepLast: 4, Headers: []HeaderRule{
		{Name: "x-user-phone"}, {Name: "X-Token", Action: "drop"}}})
	h := http.Header{"X_user_phone": {"13812345678"}, "x-user-phone": {"13912345678"}, "X_Token": {"abc"}, "X-Tokens": {"keep"}}
	counts := map[string]int{}
	m.MaskHeader(h, counts)
	if strings.Contains(strings.Join(append(h["X_user_phone"], h["x-user-phone"]...), ","), "12345678") ||
		h["X_Token"] != nil || h.Get("X-Tokens") != "keep" || counts[LabelHeader] != 3 {
		t.Fatalf("got %v, counts %v", h, counts)
	}
}

// TestOtherScriptDigits: digits of other scripts (full-width digits from
// a Chinese input method, Arabic-Indic digits) and wide spaces and dashes
// between groups are read as the ASCII ones.
func TestOtherScriptDigits(t *testing.T) {
	m := mustCompile(t, Config{Detectors: allDetectors, KeepFirst: 3, KeepLast: 4})
	id17 := "11010519491231002"
	id := id17 + string(IDCheckChar([]byte(id17)))
	wide := func(s string) string {
		var b strings.Builder
		for _, r := range s {
			if r >= '0' && r <= '9' {
				r += '０' - '0'
			}
			b.WriteRune(r)
		}
		return b.String()
	}
	for _, c := range []struct{ in, want string }{
		{`{"p":"１３８１２３４５６７８"}`, `{"p":"１３８****５６７８"}`},
		{`{"p":"tel：１３８－１２３４－５６７８。"}`, `{"p":"tel：１３８******５６７８。"}`},
		{`{"p":"١٣٨١٢٣٤٥٦٧٨"}`, `{"p":"١٣٨****٥٦٧٨"}`},
		{`{"p":"138` + "\u00a0" + `1234` + "\u3000" + `5678"}`, `{"p":"138******5678"}`},
		{`{"p":"13８12345678"}`, `{"p":"13８****5678"}`},
		{`{"id":"` + wide(id) + `"}`, `{"id":"` + wide(masked(id)) + `"}`},
		{`{"c":"４１１１ １１１１ １１１１ １１１１"}`, `{"c":"４１１************１１１１"}`},
		{`{"１３８１２３４５６７８":1}`, `{"１３８****５６７８":1}`},
		// Not a match: more digits, or too few.
		{`{"p":"１３８１２３４５６７８９"}`, `{"p":"１３８１２３４５６７８９"}`},
		{`{"p":"名字１３８"}`, `{"p":"名字１３８"}`},
	} {
		out, _, err := maskRun(t, m, KindJSON, c.in)
		if err != nil || out != c.want {
			t.Errorf("%s: got %s, %v; want %s", c.in, out, err, c.want)
		}
	}
	h := http.Header{"X-Note": {"call １３８１２３４５６７８"}}
	m2 := mustCompile(t, Config{Detectors: allDetectors, Headers: []HeaderRule{{Name: "x-note", Action: "detect"}}})
	m2.MaskHeader(h, map[string]int{})
	if h.Get("X-Note") != "call ***********" {
		t.Errorf("header: %q", h.Get("X-Note"))
	}
}

// TestDigitRanges: asciiOf relies on every range of unicode.Nd being runs
// of ten digits from 0 to 9.
func TestDigitRanges(t *testing.T) {
	for _, rg := range unicode.Nd.R16 {
		if rg.Stride != 1 || (rg.Hi-rg.Lo+1)%10 != 0 {
			t.Errorf("Nd range %#x-%#x stride %d", rg.Lo, rg.Hi, rg.Stride)
		}
	}
	for _, rg := range unicode.Nd.R32 {
		if rg.Stride != 1 || (rg.Hi-rg.Lo+1)%10 != 0 {
			t.Errorf("Nd range %#x-%#x stride %d", rg.Lo, rg.Hi, rg.Stride)
		}
	}
	for _, rg := range [][2]rune{{0x3400, 0x9fff}, {0xac00, 0xd7ff}} { // asciiOf's shortcut
		for r := rg[0]; r <= rg[1]; r++ {
			if unicode.Is(unicode.Nd, r) {
				t.Fatalf("%U is a digit", r)
			}
		}
	}
	for r, want := range map[rune]byte{'０': '0', '９': '9', '٣': '3', '۷': '7', '३': '3', 0x1d7ce: '0', 0x1d7d8: '0', 0x1d7e1: '9'} {
		if c, ok := asciiOf(r); !ok || c != want {
			t.Errorf("%U: %q %v, want %q", r, c, ok, want)
		}
	}
}

// TestCheckUpgrade: a request that switches protocols would send its
// WebSocket or tunnel bytes past the masker.
func TestCheckUpgrade(t *testing.T) {
	body := mustCompile(t, Config{Detectors: allDetectors})
	pass := mustCompile(t, Config{Detectors: allDetectors, OnUpgrade: "pass"})
	headersOnly := mustCompile(t, Config{Headers: []HeaderRule{{Name: "x-a"}}})
	for _, c := range []struct {
		m      *Masker
		method string
		h      http.Header
		want   bool
	}{
		{body, "GET", http.Header{"Upgrade": {"websocket"}, "Connection": {"Upgrade"}}, true},
		{body, "GET", http.Header{"upgrade": {"websocket"}}, true},
		{body, "GET", http.Header{"Connection": {"keep-alive, UPGRADE"}}, true},
		{body, "CONNECT", http.Header{}, true},
		{body, "POST", http.Header{"Connection": {"keep-alive"}}, false},
		{pass, "GET", http.Header{"Upgrade": {"websocket"}}, false},
		{headersOnly, "GET", http.Header{"Upgrade": {"websocket"}}, false},
	} {
		err := c.m.CheckUpgrade(c.method, c.h)
		if (err != nil) != c.want || err != nil && !errors.Is(err, ErrUpgrade) {
			t.Errorf("%s %v: %v", c.method, c.h, err)
		}
	}
}

// TestEscapedSpellings: JSON escapes are decoded before anything is
// judged, in values and keys, whatever the digits' script or the number's
// spelling.
func TestEscapedSpellings(t *testing.T) {
	m := mustCompile(t, Config{Detectors: allDetectors, KeepFirst: 3, KeepLast: 4})
	for _, c := range []struct{ in, want string }{
		{`{"\u0031\u0033\u0038\u0031\u0032\u0033\u0034\u0035\u0036\u0037\u0038":1}`, `{"138****5678":1}`},
		{`["\uff11\uff13\uff18\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18"]`, `["１３８****５６７８"]`},
		{`["\u0031.3812345678\u0065\u0031\u0030"]`, `["138****5678"]`},
		{`{"p":"138\u002d1234\u002D5678"}`, `{"p":"138******5678"}`},
	} {
		out, _, err := maskRun(t, m, KindJSON, c.in)
		if err != nil || out != c.want {
			t.Errorf("%s: got %s, %v; want %s", c.in, out, err, c.want)
		}
	}
}

func TestNonASCII(t *testing.T) {
	for n := range 20 {
		for pos := 0; pos <= n; pos++ {
			b := []byte(strings.Repeat("a", n))
			if pos < n {
				b[pos] = 0xc3
			}
			for from := 0; from <= pos; from++ {
				if got := nonASCII(b, from); got != pos {
					t.Fatalf("len %d, non-ASCII at %d, from %d: got %d", n, pos, from, got)
				}
			}
		}
	}
}

// TestDecodeCompressed: with onCompressed: decode, a gzip or deflate body
// is decompressed, masked and compressed again; what cannot be decoded is
// refused or fails.
func TestDecodeCompressed(t *testing.T) {
	m := mustCompile(t, Config{Detectors: allDetectors, KeepFirst: 3, KeepLast: 4, OnCompressed: "decode"})
	in := `{"phone":1.3812345678e10,"note":"call 13912345678","pad":"` + strings.Repeat("x", 100000) + `"}`
	want := `{"phone":"138****5678","note":"call 139****5678","pad":"` + strings.Repeat("x", 100000) + `"}`
	gz := func(s string) string {
		var b bytes.Buffer
		w := gzip.NewWriter(&b)
		w.Write([]byte(s))
		w.Close()
		return b.String()
	}
	zl := func(s string) string {
		var b bytes.Buffer
		w := zlib.NewWriter(&b)
		w.Write([]byte(s))
		w.Close()
		return b.String()
	}
	for _, c := range []struct {
		ce     string
		body   string
		decode func(string) (string, error)
	}{
		{"gzip", gz(in), func(s string) (string, error) {
			r, err := gzip.NewReader(strings.NewReader(s))
			if err != nil {
				return "", err
			}
			b, err := io.ReadAll(r)
			return string(b), err
		}},
		{"deflate", zl(in), func(s string) (string, error) {
			r, err := zlib.NewReader(strings.NewReader(s))
			if err != nil {
				return "", err
			}
			b, err := io.ReadAll(r)
			return string(b), err
		}},
	} {
		k, err := m.Classify(http.Header{"Content-Type": {"application/json"}, "Content-Encoding": {c.ce}})
		if err != nil {
			t.Fatalf("%s: %v", c.ce, err)
		}
		out, counts, err := maskRun(t, m, k, c.body)
		if err != nil {
			t.Fatalf("%s: %v", c.ce, err)
		}
		plain, err := c.decode(out)
		if err != nil || plain != want || counts[DetectorCNMobile] != 2 {
			t.Fatalf("%s: got %.80q, %v, counts %v", c.ce, plain, err, counts)
		}
	}
	// Refused: codings it cannot decode, or more than one.
	for _, ce := range []string{"br", "zstd", "gzip, gzip", "deflate, gzip"} {
		if _, err := m.Classify(http.Header{"Content-Type": {"application/json"}, "Content-Encoding": {ce}}); !errors.Is(err, ErrCompressed) {
			t.Errorf("%s: %v", ce, err)
		}
	}
	k, _ := m.Classify(http.Header{"Content-Type": {"application/json"}, "Content-Encoding": {"gzip"}})
	// Malformed: not gzip, cut short, or a decompression bomb.
	bomb := gz("[" + strings.Repeat(" ", 8<<20) + "]")
	for name, body := range map[string]string{"not gzip": "{}", "cut short": gz(in)[:len(gz(in))/2], "bomb": bomb} {
		_, _, err := maskRun(t, m, k, body)
		t.Logf("%s: %v", name, err)
		if !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v", name, err)
		}
	}
	// An empty body stays empty.
	if out, _, err := maskRun(t, m, k, ""); err != nil || out != "" {
		t.Errorf("empty: %q, %v", out, err)
	}
}

// TestPathMemberCase: a JSON path names its members in any case, as the
// backends that read them do (Go's encoding/json, ASP.NET Core's web
// defaults and Jackson's ACCEPT_CASE_INSENSITIVE_PROPERTIES bind "Name"
// and "NAME" to a field called name): {"NAME": ...} must not leave
// unmasked past a rule for $.customer.name.
func TestPathMemberCase(t *testing.T) {
	m := mustCompile(t, Config{JSONPaths: []PathRule{{Path: "$.customer.name"}, {Path: "$.items[*].cvv", Action: ActionDrop}}})
	for _, c := range []struct{ in, want string }{
		{`{"customer":{"name":"Bob"}}`, `{"customer":{"name":"***"}}`},
		{`{"customer":{"Name":"Bob"}}`, `{"customer":{"Name":"***"}}`},
		{`{"CUSTOMER":{"NAME":"Bob"}}`, `{"CUSTOMER":{"NAME":"***"}}`},
		{`{"customer":{"na\u004De":"Bob"}}`, `{"customer":{"na\u004De":"***"}}`},
		{`{"items":[{"CVV":"123","n":1}]}`, `{"items":[{"n":1}]}`},
		{`{"customer":{"names":"Bob"}}`, `{"customer":{"names":"Bob"}}`},
	} {
		out, _, err := maskRun(t, m, KindJSON, c.in)
		if err != nil || out != c.want {
			t.Errorf("%s: got %s, %v; want %s", c.in, out, err, c.want)
		}
	}
}
