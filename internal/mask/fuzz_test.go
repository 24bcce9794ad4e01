package mask

import (
	"bytes"
	"encoding/json"
	"io"
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
