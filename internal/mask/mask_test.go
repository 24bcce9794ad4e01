package mask

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"
)

var allDetectors = []string{DetectorCNID, DetectorCNMobile, DetectorBankCard}

func mustCompile(t testing.TB, c Config) *Masker {
	t.Helper()
	m, err := Compile(c)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// masked is s masked with KeepFirst 3, KeepLast 4 (ASCII s).
func masked(s string) string { return s[:3] + strings.Repeat("*", len(s)-7) + s[len(s)-4:] }

func testConfig() Config {
	return Config{Detectors: allDetectors, KeepFirst: 3, KeepLast: 4,
		JSONPaths: []PathRule{{Path: "$.customer.name"}, {Path: "$.customer.token", Action: "drop"},
			{Path: "$.items[*].note", Action: "mask"}, {Path: "$.tags[0]", Action: "drop"}, {Path: "$['odd key'].*", Action: "drop"}},
		Regexes: []RegexRule{{Name: "employee", Pattern: `EMP-\d{6}`}}}
}

func TestDetectorsInJSON(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	id := genID(r, true)
	var idX string
	for !strings.HasSuffix(idX, "X") {
		idX = genID(r, true)
	}
	badID := "11" + genID(r, false)[2:] // province 11: never a card (first digit 1)
	for validID([]byte(badID)) {
		badID = "11" + genID(r, false)[2:]
	}
	card := genCard(r, "622202", 19, true)
	card16 := genCard(r, "4", 16, true)
	badCard := genCard(r, "622202", 19, false)
	grouped := card16[:4] + " " + card16[4:8] + " " + card16[8:12] + " " + card16[12:]
	m := mustCompile(t, testConfig())
	for _, c := range []struct{ name, in, want string }{
		{"id in string", `{"id":"` + id + `"}`, `{"id":"` + masked(id) + `"}`},
		{"id ending in X", `{"id":"` + idX + `"}`, `{"id":"` + masked(idX) + `"}`},
		{"id ending in lower x", `["` + strings.ToLower(idX) + `"]`, `["` + masked(strings.ToLower(idX)) + `"]`},
		{"id with a wrong checksum is left", `{"id":"` + badID + `"}`, `{"id":"` + badID + `"}`},
		{"id grouped 6-8-4", `{"id":"` + id[:6] + " " + id[6:14] + " " + id[14:] + `"}`, `{"id":"` + masked(id[:6]+" "+id[6:14]+" "+id[14:]) + `"}`},
		{"phone in a sentence", `{"msg":"call 13812345678 now"}`, `{"msg":"call 138****5678 now"}`},
		{"phone after +86", `{"p":"+86 13912345678, +8615012345678"}`, `{"p":"+86 139****5678, +86150****5678"}`},
		{"phone after 86 and 0086", `{"p":"8613812345678/008613812345678"}`, `{"p":"86138****5678/0086138****5678"}`},
		{"phone grouped", `{"p":"138-1234-5678 or 138 1234 5678"}`, `{"p":"138******5678 or 138******5678"}`},
		{"not a phone: 12 digits", `{"p":"138123456789"}`, `{"p":"138123456789"}`},
		{"not a phone: second digit 2", `{"p":"12812345678"}`, `{"p":"12812345678"}`},
		{"card 19 digits", `{"c":"` + card + `"}`, `{"c":"` + masked(card) + `"}`},
		{"card grouped", `{"c":"card ` + grouped + ` ok"}`, `{"c":"card ` + masked(grouped) + ` ok"}`},
		{"card failing luhn is left", `{"c":"` + badCard + `"}`, `{"c":"` + badCard + `"}`},
		{"card as a number", `{"c":` + card16 + `}`, `{"c":"` + masked(card16) + `"}`},
		{"phone as a number", `{"p":13812345678,"q":-13812345678}`, `{"p":"138****5678","q":"-138****5678"}`},
		{"timestamp is no card", `{"ts":1700000000000,"n":12.5e3,"z":0}`, `{"ts":1700000000000,"n":12.5e3,"z":0}`},
		{"unicode escapes are decoded", `{"p":"\u0031\u0033\u0038\u0031\u0032\u0033\u0034\u0035\u0036\u0037\u0038"}`, `{"p":"138****5678"}`},
		{"escapes kept when nothing matches", `{"s":"a\"b\\c\u00e9\n\ud83d\ude00\/"}`, `{"s":"a\"b\\c\u00e9\n\ud83d\ude00\/"}`},
		{"masked string is re-escaped", `{"s":"x\"13812345678\"\u00e9\t\u0001"}`, `{"s":"x\"138****5678\"é\t\u0001"}`},
		{"phone in a key", `{"13812345678":{"a":1}}`, `{"138****5678":{"a":1}}`},
		{"regex", `{"e":"id EMP-123456 x"}`, `{"e":"id EMP***3456 x"}`},
		{"nested arrays", `[[["13812345678"]],[[1,[13812345678,"a"]]]]`, `[[["138****5678"]],[[1,["138****5678","a"]]]]`},
		{"top-level string", `"13812345678"`, `"138****5678"`},
		{"top-level number", `13812345678`, `"138****5678"`},
		{"stream of values", "{\"a\":13812345678}\n{\"b\":1}\n", "{\"a\":\"138****5678\"}\n{\"b\":1}\n"},
		{"literals", `{"t":true,"f":false,"n":null,"x":-1.5E+3,"y":[]}`, `{"t":true,"f":false,"n":null,"x":-1.5E+3,"y":[]}`},
		{"empty body", ``, ``},
		{"whitespace", " \n", " \n"},
		// paths
		{"mask path, short value keeps at least half masked", `{"customer":{"name":"张三丰","age":3}}`, `{"customer":{"name":"张**","age":3}}`},
		{"drop first member", `{"customer":{"token":"t","name":"李四"}}`, `{"customer":{"name":"李*"}}`},
		{"drop middle member", `{"customer":{"a":1,"token":"t","b":2}}`, `{"customer":{"a":1,"b":2}}`},
		{"drop only member", `{"customer":{"token":{"deep":["13812345678"]}}}`, `{"customer":{}}`},
		{"drop last member with spaces", `{ "customer" : { "name" : "王五" , "token" : [1,{"a":2}] } }`, `{ "customer" : { "name" : "王*"  } }`},
		{"drop key written with escapes", `{"customer":{"a":1,"t\u006fken":"x"}}`, `{"customer":{"a":1}}`},
		{"mask path in every element", `{"items":[{"note":"secret note","n":1},{"note":12345},{"note":{"x":"abcdefghij","y":true}}]}`,
			`{"items":[{"note":"sec****note","n":1},{"note":"12***"},{"note":{"x":"abc***ghij","y":true}}]}`},
		{"drop array element", `{"tags":["a","b","c"]}`, `{"tags":["b","c"]}`},
		{"drop with quoted path and wildcard", `{"odd key":{"a":1,"b":[2]},"k":1}`, `{"odd key":{},"k":1}`},
		{"path does not match elsewhere", `{"name":"x","other":{"customer":{"token":"t"}}}`, `{"name":"x","other":{"customer":{"token":"t"}}}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, _, err := maskRun(t, m, KindJSON, c.in)
			if err != nil {
				t.Fatalf("%q: %v", c.in, err)
			}
			if out != c.want {
				t.Fatalf("\n in: %s\ngot: %s\nwant %s", c.in, out, c.want)
			}
			checkProperty(t, c.in, out)
		})
	}
}

func TestCounts(t *testing.T) {
	m := mustCompile(t, testConfig())
	_, counts, err := maskRun(t, m, KindJSON, `{"a":"13812345678 13912345678","customer":{"name":"x"},"e":"EMP-000001"}`)
	if err != nil {
		t.Fatal(err)
	}
	if counts[DetectorCNMobile] != 2 || counts[LabelJSONPath] != 1 || counts["employee"] != 1 {
		t.Fatalf("counts %v", counts)
	}
}

func TestMalformed(t *testing.T) {
	reject := mustCompile(t, Config{Detectors: allDetectors})
	pass := mustCompile(t, Config{Detectors: allDetectors, OnMalformed: "pass"})
	for _, in := range []string{`{"a":`, `{"a" 1}`, `[1,]`, `{"a":"\x"}`, `tru`, `{"a":01}`, `"abc`, `{"a":"b"}}`,
		`{}x`, `{"a":"\u12g4"}`, "[\"a\x01\"]", `[-]`, `[1.]`, `[1e]`, `{,}`, `{"a":1,}`, `[`, `]`, `{"a":nul}`, strings.Repeat("[", maxDepth+1)} {
		out, _, err := maskRun(t, reject, KindJSON, in)
		if !errors.Is(err, ErrMalformed) {
			t.Errorf("%.40q: got %q, %v; want ErrMalformed", in, out, err)
		}
		out, _, err = maskRun(t, pass, KindJSON, in)
		if err != nil || out != in {
			t.Errorf("pass %.40q: got %.40q, %v", in, out, err)
		}
	}
	// Pass: what came before the error is masked, the rest is sent as is.
	out, _, err := maskRun(t, pass, KindJSON, `{"p":"13812345678","x":}13812345678"`)
	if err != nil || out != `{"p":"***********","x":}13812345678"` {
		t.Fatalf("got %q, %v", out, err)
	}
}

func TestLongStringsAreScannedInWindows(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	m := mustCompile(t, Config{Detectors: allDetectors, KeepFirst: 3, KeepLast: 4, MaxTokenBytes: 4096,
		Regexes: []RegexRule{{Name: "secret", Pattern: `SECRET[a-z]*`}}})
	var b strings.Builder
	for b.Len() < 60000 {
		switch r.IntN(7) {
		case 6: // full-width digits, grouped by ideographic spaces
			for i, c := range genMobile(r) {
				if i == 3 || i == 7 {
					b.WriteRune('\u3000')
				}
				b.WriteRune(c - '0' + '０')
			}
		case 0:
			b.WriteString(genMobile(r))
		case 1:
			b.WriteString(genID(r, true))
		case 2:
			c := genCard(r, "62", 16, true)
			b.WriteString(c[:4] + "-" + c[4:8] + "-" + c[8:12] + "-" + c[12:])
		case 3:
			b.WriteString(`\u0031\u0033\u0038` + "12345678") // escaped digits
		case 4:
			b.WriteString("SECRET" + strings.Repeat("x", r.IntN(200)))
		default:
			b.WriteString(`é\"\\` + strings.Repeat("a", r.IntN(300)))
		}
		b.WriteString([]string{" ", "-", "a", "€", "\\n"}[r.IntN(5)])
	}
	in := `{"long":"` + b.String() + `"}`
	var raw struct{ Long string }
	if err := json.Unmarshal([]byte(in), &raw); err != nil {
		t.Fatal(err)
	}
	out, counts, err := maskRun(t, m, KindJSON, in)
	if err != nil {
		t.Fatal(err)
	}
	checkProperty(t, in, out)
	var got struct{ Long string }
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatal(err)
	}
	// The windows find what masking the whole string finds (regex matches
	// here are shorter than the overlap).
	want, n := m.MaskString(raw.Long)
	if got.Long != want {
		gi := 0
		for gi < len(want) && gi < len(got.Long) && want[gi] == got.Long[gi] {
			gi++
		}
		t.Fatalf("differs at %d:\n got %q\nwant %q", gi, got.Long[max(0, gi-40):min(gi+60, len(got.Long))], want[max(0, gi-40):min(gi+60, len(want))])
	}
	total := 0
	for _, v := range counts {
		total += v
	}
	if total != n || n < 100 {
		t.Fatalf("masked %d, whole-string masking finds %d", total, n)
	}

	// A long value a mask path names is masked whole, keeping the ends.
	mp := mustCompile(t, Config{JSONPaths: []PathRule{{Path: "$.v"}}, KeepFirst: 3, KeepLast: 4, MaxTokenBytes: 4096})
	long := "abc" + strings.Repeat("é", 10000) + "wxyz"
	out, _, err = maskRun(t, mp, KindJSON, `{"v":"`+long+`","w":"`+long+`"}`)
	if err != nil || out != `{"v":"abc`+strings.Repeat("*", 10000)+`wxyz","w":"`+long+`"}` {
		t.Fatalf("got %.100q…, %v", out, err)
	}
}

func TestTextBodies(t *testing.T) {
	m := mustCompile(t, Config{Detectors: allDetectors, KeepFirst: 3, KeepLast: 4, MaxTokenBytes: 4096, ContentTypes: []string{"text/*"}})
	var b, want strings.Builder
	for i := 0; i < 3000; i++ {
		fmt.Fprintf(&b, "line %d tel 13812345678;\n", i)
		fmt.Fprintf(&want, "line %d tel 138****5678;\n", i)
	}
	out, counts, err := maskRun(t, m, KindText, b.String())
	if err != nil || out != want.String() || counts[DetectorCNMobile] != 3000 {
		t.Fatalf("err %v, %d masked, equal %v", err, counts[DetectorCNMobile], out == want.String())
	}
}

func TestClassify(t *testing.T) {
	def := mustCompile(t, Config{Detectors: allDetectors})
	text := mustCompile(t, Config{Detectors: allDetectors, ContentTypes: []string{"application/json", "text/*"}, OnCompressed: "pass"})
	star := mustCompile(t, Config{Detectors: allDetectors, ContentTypes: []string{"*"}})
	headersOnly := mustCompile(t, Config{Headers: []HeaderRule{{Name: "x-a"}}})
	for _, c := range []struct {
		m        *Masker
		ct, ce   string
		want     Kind
		wantErr  bool
		scenario string
	}{
		{def, "application/json", "", KindJSON, false, "json"},
		{def, "application/json; charset=utf-8", "", KindJSON, false, "json with params"},
		{def, "application/problem+json", "", KindJSON, false, "+json"},
		{def, "text/plain", "", KindPass, false, "text not listed"},
		{def, "", "", KindSniff, false, "no content type: sniffed"},
		{def, "application/json", "gzip", KindPass, true, "compressed: reject"},
		{def, "application/json", "identity", KindJSON, false, "identity"},
		{text, "text/csv", "", KindText, false, "text/*"},
		{text, "application/json", "br", KindPass, false, "compressed: pass"},
		{star, "", "", KindSniffText, false, "* scans bodies without a type (JSON if it starts like JSON)"},
		{star, "application/vnd.api+json", "", KindJSON, false, "* still parses JSON"},
		{headersOnly, "application/json", "", KindPass, false, "no body rules"},
	} {
		h := http.Header{}
		if c.ct != "" {
			h.Set("Content-Type", c.ct)
		}
		if c.ce != "" {
			h.Set("Content-Encoding", c.ce)
		}
		k, err := c.m.Classify(h)
		if k != c.want || (err != nil) != c.wantErr || err != nil && !errors.Is(err, ErrCompressed) {
			t.Errorf("%s: got %v, %v", c.scenario, k, err)
		}
	}
}

func TestMaskHeader(t *testing.T) {
	m := mustCompile(t, Config{Detectors: allDetectors, KeepFirst: 3, KeepLast: 4, Headers: []HeaderRule{
		{Name: "x-user-phone"}, {Name: "X-Token", Action: "drop"}, {Name: "x-note", Action: "detect"}}})
	h := http.Header{"X-User-Phone": {"13812345678"}, "X-Token": {"abc"}, "X-Note": {"call 13912345678", "nothing"}, "X-Other": {"13812345678"}}
	counts := map[string]int{}
	m.MaskHeader(h, counts)
	want := http.Header{"X-User-Phone": {"138****5678"}, "X-Note": {"call 139****5678", "nothing"}, "X-Other": {"13812345678"}}
	if fmt.Sprint(h) != fmt.Sprint(want) || counts[LabelHeader] != 2 || counts[DetectorCNMobile] != 1 {
		t.Fatalf("got %v %v", h, counts)
	}
}

func TestCompileErrors(t *testing.T) {
	for _, c := range []struct {
		cfg   Config
		field string
	}{
		{Config{Detectors: []string{"ssn"}}, "detectors[0]"},
		{Config{Detectors: []string{"cn-id", "cn-id"}}, "detectors[1]"},
		{Config{Regexes: []RegexRule{{Name: "a", Pattern: "("}}}, "regexes[0].pattern"},
		{Config{Regexes: []RegexRule{{Name: "a", Pattern: "x*"}}}, "regexes[0].pattern"},
		{Config{Regexes: []RegexRule{{Pattern: "x"}}}, "regexes[0].name"},
		{Config{JSONPaths: []PathRule{{Path: "customer.name"}}}, "jsonPaths[0].path"},
		{Config{JSONPaths: []PathRule{{Path: "$"}}}, "jsonPaths[0].path"},
		{Config{JSONPaths: []PathRule{{Path: "$..name"}}}, "jsonPaths[0].path"},
		{Config{JSONPaths: []PathRule{{Path: "$.a[x]"}}}, "jsonPaths[0].path"},
		{Config{JSONPaths: []PathRule{{Path: "$.a[1"}}}, "jsonPaths[0].path"},
		{Config{JSONPaths: []PathRule{{Path: "$.a", Action: "hash"}}}, "jsonPaths[0].action"},
		{Config{Headers: []HeaderRule{{Name: "bad header"}}}, "headers[0].name"},
		{Config{Headers: []HeaderRule{{Name: "x", Action: "keep"}}}, "headers[0].action"},
		{Config{KeepFirst: -1}, "keepFirst"},
		{Config{KeepLast: 17}, "keepLast"},
		{Config{MaskChar: "7"}, "maskChar"},
		{Config{MaskChar: "**"}, "maskChar"},
		{Config{ContentTypes: []string{"json"}}, "contentTypes[0]"},
		{Config{OnMalformed: "drop"}, "onMalformed"},
		{Config{OnCompressed: "inflate"}, "onCompressed"},
		{Config{OnUpgrade: "tunnel"}, "onUpgrade"},
		{Config{MaxTokenBytes: 100}, "maxTokenBytes"},
	} {
		_, err := Compile(c.cfg)
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.Field != c.field {
			t.Errorf("%+v: got %v, want an error naming %s", c.cfg, err, c.field)
		}
	}
	for _, p := range []string{"$.customer.idNumber", "$.items[*].card", "$['a b'][0].c", "$.*.x", "$[2]"} {
		if _, err := parsePath(p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
}

// largeBody streams n bytes of a JSON array of realistic records, with a
// 2 MiB string value every 8 MiB, without holding it.
type largeBody struct {
	r       *rand.Rand
	n, sent int
	buf     []byte
	records int
	ended   bool
}

func (b *largeBody) Read(p []byte) (int, error) {
	for len(b.buf) == 0 {
		switch {
		case b.ended:
			return 0, io.EOF
		case b.sent == 0:
			b.buf = []byte(`{"items":[`)
		case b.sent >= b.n:
			b.buf = []byte(`{"end":true}]}`)
			b.ended = true
		default:
			b.buf = appendRecord(b.buf, b.r, b.records)
			if b.records%400 == 399 {
				b.buf = append(b.buf, `{"blob":"`...)
				for i := 0; i < 2<<20; i += 64 {
					b.buf = append(b.buf, "tel 13812345678 and some text to pad this line out to 64 bytes.."...)
				}
				b.buf = append(b.buf, `"},`...)
			}
			b.records++
		}
	}
	n := copy(p, b.buf)
	b.buf = b.buf[n:]
	b.sent += n
	return n, nil
}

func appendRecord(dst []byte, r *rand.Rand, i int) []byte {
	return fmt.Appendf(dst, `{"id":%d,"customer":{"name":"用户%d","idNumber":"%s","phone":"+86 %s","email":"u%d@example.com"},`+
		`"items":[{"sku":"A-%05d","qty":%d,"price":%d.%02d,"card":"%s"},{"sku":"B-%05d","note":"deliver after 6pm, call %s"}],`+
		`"tags":["edge","retail"],"ok":true,"ts":17000000%05d},`,
		i, i, genID(r, true), genMobile(r), i, i, r.IntN(9)+1, r.IntN(999), r.IntN(100), genCard(r, "62", 19, true), i, genMobile(r), i%100000)
}

// TestLargeBodyBoundedMemory streams 100 MB (10 MB with -short) through
// the JSON scanner and checks that its buffers stay small.
func TestLargeBodyBoundedMemory(t *testing.T) {
	size := 100 << 20
	if testing.Short() {
		size = 10 << 20
	}
	m := mustCompile(t, testConfig())
	src := &largeBody{r: rand.New(rand.NewPCG(5, 6)), n: size}
	counts := map[string]int{}
	rd := m.NewReader(src, KindJSON, func(l string, n int) { counts[l] += n })
	n, err := io.Copy(io.Discard, rd)
	if err != nil {
		t.Fatal(err)
	}
	peak := rd.(*Reader).peak
	t.Logf("%d bytes, %d records, peak buffers %d bytes, counts %v", n, src.records, peak, counts)
	if n < int64(size) || peak > 8<<20 {
		t.Fatalf("read %d bytes; peak buffers %d bytes, want at most 8 MiB", n, peak)
	}
	if counts[DetectorCNID] < src.records || counts[DetectorBankCard] < src.records || counts[DetectorCNMobile] < 2*src.records {
		t.Fatalf("counts %v for %d records", counts, src.records)
	}
}

func BenchmarkMaskJSON(b *testing.B) {
	r := rand.New(rand.NewPCG(7, 8))
	var body []byte
	body = append(body, `{"items":[`...)
	for i := 0; len(body) < 1<<20; i++ {
		body = appendRecord(body, r, i)
	}
	body = append(body, `{"end":true}]}`...)
	m := mustCompile(b, testConfig())
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := io.Copy(io.Discard, m.NewReader(bytes.NewReader(body), KindJSON, nil)); err != nil {
			b.Fatal(err)
		}
	}
}
