// Fuzz targets: random command sequences (the transcript language) fed
// into each machine, which must never panic and must keep its invariants.

package syncproto

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/fogmesh/fogmesh/internal/wire"
)

// addTranscriptSeeds adds the commands of the transcripts whose names start
// with prefix as seeds: realistic sequences the fuzzer mutates.
func addTranscriptSeeds(f *testing.F, prefix string) {
	files, err := filepath.Glob("testdata/" + prefix + "*.txt")
	if err != nil || len(files) == 0 {
		f.Fatalf("no %s transcripts: %v", prefix, err)
	}
	for _, file := range files {
		text, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		blocks, err := parseTranscript(string(text))
		if err != nil {
			f.Fatal(err)
		}
		var cmds []string
		for _, b := range blocks {
			cmds = append(cmds, strings.TrimSpace(b.cmd+" "+b.arg))
		}
		f.Add(strings.Join(cmds, "\n"))
	}
}

// fuzzScript runs the lines of in (transcript commands, malformed ones
// skipped) against a machine and checks what must hold whatever the peer
// sends: no panic; a step that ends the stream leaves the machine Closed;
// every frame it sends encodes; the agent sends only agent frames and acks
// or nacks only the update it was given; the control plane sends only
// control frames, each update with a new, increasing nonce.
func fuzzScript(t *testing.T, s *script, in string) {
	var applying *wire.Message // the agent's last Apply
	var lastNonce uint64       // the control machine's last update nonce
	var lastChunk, chunks int  // the control machine's last chunk, of chunks
	var pending *wire.Message  // the agent's last update chunk received
	for _, line := range strings.Split(in, "\n") {
		cmd, arg, _ := strings.Cut(line, " ")
		// A new machine or stream: only if the command took (a malformed
		// "connect 0" leaves the stream and its held chunks as they are).
		fresh := cmd == "agent" || cmd == "control" || cmd == "connect"
		var recvd *wire.Message // the update received in this step
		if cmd == "recv" {
			if m, err := wire.Decode([]byte(strings.TrimSpace(arg))); err == nil && m.Type == wire.TypeUpdate && (m.Chunk != 0 || m.Chunks != 0) {
				recvd = m
			}
		}
		held := pending
		if recvd != nil {
			pending = recvd
		}
		out, state, err := s.exec(cmd, strings.TrimSpace(arg))
		if err != nil {
			continue // the script's fault, not the machine's
		}
		if fresh {
			applying, lastNonce, lastChunk, chunks, pending = nil, 0, 0, 0, nil
		}
		if out.Err != nil && state != "Closed" && state != "Idle" { // Idle: no stream to end
			t.Fatalf("%s: stream ended (%v) but the machine is %s", line, out.Err, state)
		}
		for _, m := range out.Send {
			if _, err := json.Marshal(m); err != nil {
				t.Fatalf("%s: sends a frame that does not encode: %v", line, err)
			}
			if s.agent != nil {
				switch m.Type {
				case wire.TypeHello, wire.TypeSubscribe, wire.TypeLocal, wire.TypeSessions, wire.TypeHeartbeat,
					wire.TypeAudit, wire.TypeSVID, wire.TypeRenew:
				case wire.TypeNack:
					// A malformed chunk is refused as it arrives, and an update
					// whose chunks another frame interrupts when that arrives.
					if applying == nil && ((recvd != nil && m.Nonce == recvd.Nonce && m.Version == recvd.Version) ||
						(held != nil && m.Nonce == held.Nonce && m.Version == held.Version)) {
						continue
					}
					fallthrough
				case wire.TypeAck:
					if applying == nil || m.Nonce != applying.Nonce || m.Version != applying.Version {
						t.Fatalf("%s: %s of nonce %q version %d, but the update applied was %+v", line, m.Type, m.Nonce, m.Version, applying)
					}
					applying = nil
				default:
					t.Fatalf("%s: the agent sends %s", line, m.Type)
				}
				continue
			}
			switch m.Type {
			case wire.TypeUpdate:
				n, err := strconv.ParseUint(m.Nonce, 10, 64)
				if m.Chunk > 1 { // a later chunk: the same update
					if err != nil || n != lastNonce || m.Chunk != lastChunk+1 || m.Chunks != chunks {
						t.Fatalf("%s: chunk %d of %d nonce %q after chunk %d of %d nonce %d", line, m.Chunk, m.Chunks, m.Nonce, lastChunk, chunks, lastNonce)
					}
				} else if err != nil || n <= lastNonce || (lastChunk != chunks) {
					t.Fatalf("%s: update nonce %q after %d (chunk %d of %d)", line, m.Nonce, lastNonce, lastChunk, chunks)
				}
				lastNonce, lastChunk, chunks = n, m.Chunk, m.Chunks
			case wire.TypeWelcome, wire.TypeError, wire.TypeHeartbeat, wire.TypeAuditAck, wire.TypeCert,
				wire.TypeSVIDIssued, wire.TypeTrust:
			default:
				t.Fatalf("%s: the control plane sends %s", line, m.Type)
			}
		}
		for _, e := range out.Effects {
			if a, ok := e.(Apply); ok {
				applying = a.Msg
			}
		}
	}
}

func FuzzAgent(f *testing.F) {
	addTranscriptSeeds(f, "agent_")
	f.Add("recv {\"type\":\"update\"}\napplied\nconnect\nrecv {}\nrecv {\"type\":\"welcome\",\"heartbeatMillis\":-5}\ntick {}")
	// chunked seeds (the chunk transcripts seed more)
	f.Add("limits {\"maxChunks\":3,\"maxUpdateBytes\":100}\nconnect\nrecv {\"type\":\"welcome\"}\nrecv {\"type\":\"update\",\"nonce\":\"1\",\"chunk\":1,\"chunks\":2}\ntick {}\nrecv {\"type\":\"update\",\"nonce\":\"1\",\"chunk\":2,\"chunks\":2}\napplied")
	f.Fuzz(func(t *testing.T, in string) {
		fuzzScript(t, newScript(), in)
	})
}

func FuzzControl(f *testing.F) {
	addTranscriptSeeds(f, "control_")
	f.Add("recv {\"type\":\"hello\"}\nadmitted {}\nsend {\"type\":\"update\"}\nrecv {\"type\":\"subscribe\"}\nsend {}")
	// Issue 16: a heartbeat's VIP bind failures, good and hostile.
	f.Add("recv {\"type\":\"hello\",\"protocol\":1,\"node\":{\"metadata\":{\"name\":\"n1\"}}}\nadmitted {}\nrecv {\"type\":\"subscribe\"}\nrecv {\"type\":\"heartbeat\",\"vipBindFailures\":[{\"address\":\"127.28.0.1:80\",\"service\":\"demo/hello\",\"error\":\"bind: address already in use\",\"since\":\"2026-01-01T00:00:00Z\"},{\"address\":\"nope\",\"service\":\"\\u001b[2J\"}]}")
	f.Add("limits {\"chunkItems\":1,\"chunkBytes\":10,\"maxChunks\":2}\nrecv {\"type\":\"hello\",\"protocol\":1,\"node\":{\"metadata\":{\"name\":\"n1\"}},\"capabilities\":[\"policy2\",\"chunks\"]}\nadmitted {}\nrecv {\"type\":\"subscribe\"}\nsend {\"type\":\"update\",\"removed\":[{\"type\":\"Endpoint\",\"name\":\"a/b\"},{\"type\":\"Endpoint\",\"name\":\"a/c\"}]}\nsend {\"type\":\"update\",\"chunk\":1,\"chunks\":2}")
	f.Fuzz(func(t *testing.T, in string) {
		s := newScript()
		s.run("control", "")
		fuzzScript(t, s, in)
	})
}

// FuzzScopeWiden: scope entries from the wire (a later subscribe) widen a
// filter: whatever they hold, every entry reported added is a valid scope
// entry the filter did not cover before and covers now, the scope stays
// within MaxScopeServices, and the filter widened is left as it was.
func FuzzScopeWiden(f *testing.F) {
	f.Add("shop/*\ncloud/orders")
	f.Add("bad\n/x\na/b/c\n*/*\nns/")
	f.Add("cloud/orders\ncloud/orders\ncloud/*")
	f.Fuzz(func(t *testing.T, in string) {
		base := NewFilter(&wire.Message{Scope: &wire.Scope{Services: []string{"base/*"}}})
		keys := strings.Split(in, "\n")
		w, added := base.Widen(keys)
		for _, k := range added {
			if !ScopeEntry(k) || !w.Covers(k) {
				t.Fatalf("added %q: valid %t, covered %t", k, ScopeEntry(k), w.Covers(k))
			}
			if strings.HasSuffix(k, "/*") && base.Covers(k) || !strings.HasSuffix(k, "/*") && base.services[k] {
				t.Fatalf("added %q, which the filter held already", k)
			}
		}
		if len(w.services)+len(w.namespaces) > MaxScopeServices {
			t.Fatalf("scope grew to %d entries", len(w.services)+len(w.namespaces))
		}
		if len(base.services) != 0 || len(base.namespaces) != 1 {
			t.Fatal("Widen changed the filter it came from")
		}
	})
}
