package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/fogmesh/fogmesh/internal/control"
)

// statsAnswer is a GET /v1/stats answer as a control plane writes it.
const statsAnswer = `{"time":"2026-12-06T10:00:00Z","services":[{"service":"shop/orders","requests":120,"rps":2,"success":0.99,"p50":0.004,"p95":0.05,"p99":-1,"window":60}],` +
	`"edges":[{"service":"shop/orders","sourceService":"shop/web","sourceNode":"n1","node":"n2","tier":"site","path":"same_site","requests":120,"rps":2,"success":-1,"p50":-1,"p95":-1,"p99":-1,"window":60}],` +
	`"nodes":["n1"],"unreported":{"n3":"no request counters in its heartbeats"},"dropped":{"n1":2}}`

// checkTerminalText fails t unless out, a table for the terminal, is
// valid UTF-8 of graphic runes and newlines only (no escape sequence).
func checkTerminalText(t *testing.T, out string) {
	t.Helper()
	if !utf8.ValidString(out) {
		t.Fatalf("table is not UTF-8: %q", out)
	}
	for _, r := range out {
		if r != '\n' && !unicode.IsGraphic(r) {
			t.Fatalf("table holds %U: %q", r, out)
		}
	}
}

// checkStatsOutput: the table has a line per row (and its headers), only
// graphic runes, and is valid UTF-8; JSON output is valid JSON.
func checkStatsOutput(t *testing.T, st *control.StatsResponse) {
	t.Helper()
	var tb, jb bytes.Buffer
	if err := printStats(&tb, "table", st.Services, st.Edges, true, "unreported", st.Unreported); err != nil {
		t.Fatal(err)
	}
	out := tb.String()
	checkTerminalText(t, out)
	lines := 1 + max(1, len(st.Services)) + len(st.Unreported)
	if len(st.Edges) > 0 {
		lines += 2 + len(st.Edges)
	}
	if n := strings.Count(out, "\n"); n != lines {
		t.Fatalf("table of %d lines, want %d: %q", n, lines, out)
	}
	if err := printStats(&jb, "json", st.Services, st.Edges, true, "unreported", st.Unreported); err != nil {
		t.Fatal(err)
	}
	if !json.Valid(jb.Bytes()) {
		t.Fatalf("json output is not JSON: %q", jb.String())
	}
	for _, r := range jb.String() {
		if r != '\n' && !unicode.IsGraphic(r) {
			t.Fatalf("json output holds %U raw: %q", r, jb.String())
		}
	}
}

// TestStatsTableEscapesAnswer: names and messages of a control plane's
// answer that are not graphic (an escape sequence, a newline, a tab) are
// printed quoted. Before, they went to the terminal as they were: an
// answer could clear or recolour it, or add rows and shift columns.
func TestStatsTableEscapesAnswer(t *testing.T) {
	for _, c := range []struct{ from, to string }{
		{`"service":"shop/orders"`, `"service":"shop/orders\u001b[2J\u001b[31m"`},
		{`"sourceNode":"n1"`, `"sourceNode":"n1\nfake/row 99.00"`},
		{`"tier":"site"`, `"tier":"si\tte"`},
		{`"tier":"site"`, `"tier":"si\u009b2Jte"`},
		{`"no request counters in its heartbeats"`, `"gone\r\u202etxt.exe"`},
	} {
		in := strings.Replace(statsAnswer, c.from, c.to, 1)
		var st control.StatsResponse
		if err := json.Unmarshal([]byte(in), &st); err != nil {
			t.Fatal(err)
		}
		t.Run(c.to, func(t *testing.T) { checkStatsOutput(t, &st) })
	}
}

// FuzzStatsAnswer: any GET /v1/stats answer the CLI decodes (fogmesh stat,
// top) prints as a table of one line per row, of graphic runes only, or
// as valid JSON; never a panic.
func FuzzStatsAnswer(f *testing.F) {
	f.Add([]byte(statsAnswer))
	f.Add([]byte(strings.Replace(statsAnswer, `"service":"shop/orders"`, `"service":"a\u001b]0;x\u0007\n\t\u00ff\ud800"`, 1)))
	f.Add([]byte(`{"services":[{"service":"","rps":1e308,"success":2,"p50":1e300,"requests":-5}],"edges":[{}]}`))
	f.Add([]byte(`{"services":null,"edges":null,"unreported":{"":""}}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var st control.StatsResponse
		if json.Unmarshal(b, &st) != nil {
			return
		}
		checkStatsOutput(t, &st)
	})
}
