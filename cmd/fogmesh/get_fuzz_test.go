package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/control"
)

var getKinds = []string{"nodes", "services", "endpoints", "routes", "destinationpolicies", "authorizationpolicies", "sessions"}

// getAnswer is a GET /v1/nodes answer with one node that cannot bind a VIP.
const getAnswer = `{"version":7,"items":[{"apiVersion":"fogmesh.io/v1alpha1","kind":"Node","metadata":{"name":"n1"},` +
	`"spec":{"site":"s1","region":"r1","meshAddress":"10.0.0.1:7072"},"status":{"ready":true,"connected":true,"load":0.5,` +
	`"vipBindFailures":[{"address":"127.77.0.5:80","service":"shop/web","error":"address already in use","since":"2026-12-06T10:00:00Z"}]}}]}`

// checkGetOutput: the table printList writes has a line per item (and
// the header, and a line per node's VIP bind failure after it), only
// graphic runes, and is valid UTF-8.
func checkGetOutput(t *testing.T, kind string, items []json.RawMessage) {
	t.Helper()
	var buf bytes.Buffer
	if err := printList(&buf, kind, items); err != nil {
		return // an item that does not decode: the command fails
	}
	out := buf.String()
	checkTerminalText(t, out)
	lines := 1 + len(items)
	if kind == "nodes" {
		for _, raw := range items {
			var n api.Node
			json.Unmarshal(raw, &n)
			lines += len(n.Status.VIPBindFailures)
		}
	}
	if n := strings.Count(out, "\n"); n != lines {
		t.Fatalf("%s: table of %d lines, want %d: %q", kind, n, lines, out)
	}
}

// TestGetTableEscapesAnswer: text of a control plane's answer that is not
// graphic is printed quoted by fogmesh get, as by fogmesh stat. Before, a
// node's site or a bind failure's error went to the terminal as it was.
func TestGetTableEscapesAnswer(t *testing.T) {
	for _, c := range []struct{ from, to string }{
		{`"site":"s1"`, `"site":"s1\u001b[2J"`},
		{`"error":"address already in use"`, `"error":"in use\nnode n9 cannot bind everything"`},
		{`"meshAddress":"10.0.0.1:7072"`, `"meshAddress":"10.0.0.1:7072\r"`},
	} {
		var resp control.ListResponse
		if err := json.Unmarshal([]byte(strings.Replace(getAnswer, c.from, c.to, 1)), &resp); err != nil {
			t.Fatal(err)
		}
		t.Run(c.to, func(t *testing.T) { checkGetOutput(t, "nodes", resp.Items) })
	}
}

// FuzzGetAnswer: any GET /v1/KIND answer fogmesh get decodes prints as a
// table of a line per item, of graphic runes only, or fails with the
// item that does not decode; never a panic.
func FuzzGetAnswer(f *testing.F) {
	f.Add(uint8(0), []byte(getAnswer))
	f.Add(uint8(0), []byte(strings.Replace(getAnswer, `"site":"s1"`, `"site":"s1\u001b[2J\n\t"`, 1)))
	f.Add(uint8(1), []byte(`{"items":[{"metadata":{"name":"web","namespace":"demo"},"spec":{"ports":[{"name":"h\ttp","port":80,"protocol":"tcp"}],"balancer":"x\u0007"},"status":{"vip":"127.77.0.1"}}]}`))
	f.Add(uint8(2), []byte(`{"items":[{"metadata":{"name":"e","namespace":"d"},"spec":{"service":"web","node":"","address":"10.0.0.1","ports":[{"name":"http","port":80}]}},{"metadata":{"name":"a"}}]}`))
	f.Add(uint8(3), []byte(`{"items":[{"metadata":{"name":"r","namespace":"d"},"spec":{"service":"web","rules":[{"match":[{}],"backends":[{"subset":"v1\n","weight":5},{}]}],"unmatched":"reject"}}]}`))
	f.Add(uint8(4), []byte(`{"items":[{"metadata":{"name":"p"},"spec":{"service":"web","subsets":[{"name":"v1"}],"balancer":"least_request"}}]}`))
	f.Add(uint8(5), []byte(`{"items":[{"metadata":{"name":"p"},"spec":{"meshWide":true,"action":"DENY","rules":[{}]}}]}`))
	f.Add(uint8(6), []byte(`{"items":[{"metadata":{"namespace":"d"},"spec":{"service":"web","key":"k\u202e","endpoint":"e"}}]}`))
	f.Add(uint8(0), []byte(`{"items":[1,null,"x"]}`))
	f.Fuzz(func(t *testing.T, k uint8, b []byte) {
		var resp control.ListResponse
		if json.Unmarshal(b, &resp) != nil {
			return
		}
		checkGetOutput(t, getKinds[int(k)%len(getKinds)], resp.Items)
	})
}
