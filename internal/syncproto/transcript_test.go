package syncproto

// Transcript tests, in the manner of etcd raft's interaction tests: each
// file in testdata/ is a script of events fed to one machine, every event
// followed by "----" and what the machine did:
//
//	> {frame sent, as its wire JSON}
//	! effect for the driver
//	error: the error that ends the stream
//	state: the state after the step
//
// Commands (one line each; frames are the JSON of wire.Message):
//
//	agent                    the script drives an Agent (the default)
//	control [site/node]      the script drives a Control (with a TLS peer if named)
//	connect {"storeId":…,"version":…}   Agent.Connect for node n1 of site s1
//	recv {frame}             a frame from the other end
//	send {frame}             a frame this end's driver sends
//	applied [error text]     the outcome of the last Apply
//	tick {"load":…,"endpointLoad":…}
//	local {"endpoints":[…]}
//	sessions {"sessions":[…]}
//	admitted {"version":…,"storeId":…,"features":[…],"auditSeq":…,"auditHash":…}
//	reject reason text
//	scope {"services":[…]}   Agent.SetScope
//	widen {"services":[…]}   the agent widens its scope (Widen)
//	limits {"chunkBytes":…,"chunkItems":…,"maxChunks":…,"maxUpdateBytes":…}
//	                         the machine's chunking bounds (small, to script chunks)
//
// go test -run TestTranscripts -rewrite writes what the machines do now
// into the files: read the diff before committing it.

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/wire"
)

var rewrite = flag.Bool("rewrite", false, "rewrite testdata transcripts with the output the machines produce now")

// testHeartbeat is the interval a control machine in a script is given.
const testHeartbeat = time.Second

// script runs transcript commands against one machine.
type script struct {
	agent   *Agent
	control *Control
}

func newScript() *script { return &script{agent: NewAgent()} }

// run executes one command and renders what the machine did; an error is
// a malformed command (the script's fault, not the machine's).
func (s *script) run(cmd, arg string) (string, error) {
	out, state, err := s.exec(cmd, arg)
	if err != nil {
		return "", err
	}
	return render(out, state), nil
}

// exec executes one command and returns the machine's output and state.
func (s *script) exec(cmd, arg string) (out Output, state string, err error) {
	switch cmd {
	case "agent":
		s.agent, s.control = NewAgent(), nil
		return Output{}, s.agent.State(), nil
	case "control":
		var peer *PeerNode
		if arg != "" {
			site, node, ok := strings.Cut(arg, "/")
			if !ok {
				return Output{}, "", fmt.Errorf("control %q: want site/node", arg)
			}
			peer = &PeerNode{Site: site, Node: node}
		}
		s.agent, s.control = nil, NewControl(peer, testHeartbeat)
		return Output{}, s.control.State(), nil
	case "limits":
		var l Limits
		if err := json.Unmarshal([]byte(arg), &l); err != nil {
			return Output{}, "", fmt.Errorf("limits: %w", err)
		}
		if s.control != nil {
			s.control.SetLimits(l)
			return Output{}, s.control.State(), nil
		}
		s.agent.SetLimits(l)
		return Output{}, s.agent.State(), nil
	}
	m := new(wire.Message)
	if strings.HasPrefix(arg, "{") {
		if err := json.Unmarshal([]byte(arg), m); err != nil {
			return Output{}, "", fmt.Errorf("%s: %w", cmd, err)
		}
	}
	if s.control != nil {
		var ev Event
		switch cmd {
		case "recv":
			ev = Recv{m}
		case "send":
			ev = Send{Msg: m}
		case "admitted":
			var a Admitted
			if err := json.Unmarshal([]byte(arg), &a); err != nil {
				return Output{}, "", fmt.Errorf("admitted: %w", err)
			}
			ev = a
		case "reject":
			ev = Reject{Reason: arg}
		default:
			return Output{}, "", fmt.Errorf("unknown control command %q", cmd)
		}
		out, state = s.control.Step(ev), s.control.State()
	} else {
		var ev Event
		switch cmd {
		case "connect":
			var k Known
			if arg != "" {
				if err := json.Unmarshal([]byte(arg), &k); err != nil {
					return Output{}, "", fmt.Errorf("connect: %w", err)
				}
			}
			node := &api.Node{Meta: api.Meta{Name: "n1"}, Spec: api.NodeSpec{Site: "s1", Region: "r1"}}
			return s.agent.Connect(node, []string{wire.CapTrust, wire.CapPolicy2}, k), s.agent.State(), nil
		case "recv":
			ev = Recv{m}
		case "send":
			ev = Send{Msg: m}
		case "applied":
			var err error
			if arg != "" {
				err = errors.New(arg)
			}
			ev = Applied{err}
		case "tick":
			ev = Tick{Load: m.Load, EndpointLoad: m.EndpointLoad, Stats: m.Stats}
		case "local":
			ev = Local{m.Endpoints}
		case "sessions":
			ev = Sessions{m.Sessions}
		case "scope":
			var sc wire.Scope
			if err := json.Unmarshal([]byte(arg), &sc); err != nil {
				return Output{}, "", fmt.Errorf("scope: %w", err)
			}
			s.agent.SetScope(&sc)
			return Output{}, s.agent.State(), nil
		case "widen":
			var sc wire.Scope
			if err := json.Unmarshal([]byte(arg), &sc); err != nil {
				return Output{}, "", fmt.Errorf("widen: %w", err)
			}
			ev = Widen{sc.Services}
		default:
			return Output{}, "", fmt.Errorf("unknown agent command %q", cmd)
		}
		out, state = s.agent.Step(ev), s.agent.State()
	}
	return out, state, nil
}

// render prints an Output one line per frame, effect and error.
func render(out Output, state string) string {
	var b strings.Builder
	for _, m := range out.Send {
		j, err := json.Marshal(m)
		if err != nil {
			j = []byte("unencodable: " + err.Error())
		}
		fmt.Fprintf(&b, "> %s\n", j)
	}
	for _, e := range out.Effects {
		fmt.Fprintf(&b, "! %s\n", renderEffect(e))
	}
	if out.Err != nil {
		fmt.Fprintf(&b, "error: %v\n", out.Err)
	}
	fmt.Fprintf(&b, "state: %s\n", state)
	return b.String()
}

func renderEffect(e Effect) string {
	js := func(v any) string {
		j, _ := json.Marshal(v)
		return string(j)
	}
	switch e := e.(type) {
	case Connected:
		audit := "-"
		if e.Audit != nil {
			audit = fmt.Sprintf("%d:%s", e.Audit.Seq, e.Audit.Hash)
		}
		c := fmt.Sprintf("connected heartbeat=%s audit=%s svid=%t", e.Heartbeat, audit, e.SVID)
		if e.ScopeAdd {
			c += " scopeAdd=true"
		}
		if e.Stats {
			c += " stats=true"
		}
		return c
	case Apply:
		if len(e.Answered) > 0 {
			return "apply " + js(e.Msg) + " answered=" + strings.Join(e.Answered, ",")
		}
		return "apply " + js(e.Msg)
	case ScopeAdd:
		return "scope add " + js(e.Services)
	case PeerLoads:
		return "peer loads " + js(e.EndpointLoad)
	case AuditAck:
		return "audit ack " + js(e.Msg)
	case TrustUpdate:
		return "trust " + js(e.Trust)
	case CertIssued:
		return "cert " + js(e.Msg)
	case SVIDIssued:
		return "svid issued " + js(e.Msg)
	case Refused:
		return "refused " + e.Reason
	case Admit:
		return fmt.Sprintf("admit node=%s trust=%t", e.Node.Meta.Name, e.Trust)
	case Subscribed:
		var types []string
		for t := range e.Filter.types {
			types = append(types, t)
		}
		slices.Sort(types)
		return fmt.Sprintf("subscribed full=%t known=%d types=%s region=%q", e.Full, e.Known, strings.Join(types, ","), e.Filter.region)
	case Acked:
		return fmt.Sprintf("acked version=%d", e.Version)
	case Nacked:
		return fmt.Sprintf("nacked version=%d nonce=%s error=%q", e.Version, e.Nonce, e.Error)
	case Heartbeat:
		h := fmt.Sprintf("heartbeat load=%g endpointLoad=%s", e.Load, js(e.EndpointLoad))
		if e.Stats != nil {
			h += " stats=" + js(e.Stats)
		}
		return h
	case SessionsIn:
		var keys []string
		for _, s := range e.Valid {
			keys = append(keys, s.Meta.Key())
		}
		return fmt.Sprintf("sessions valid=%s refused=%d", strings.Join(keys, ","), len(e.Refused))
	case LocalIn:
		return fmt.Sprintf("local endpoints=%d", len(e.Endpoints))
	case AuditIn:
		return "audit " + js(e.Msg)
	case RenewIn:
		return "renew " + js(e.Msg)
	case SVIDIn:
		return "svid " + js(e.Msg)
	case BadFrame:
		return "bad frame"
	case OldAgent:
		return "old agent"
	case Unauthorized:
		return "unauthorized"
	}
	return fmt.Sprintf("unknown effect %T", e)
}

// block is one command of a transcript and the output written under it.
type block struct {
	pre  []string // comments and blank lines before the command
	line int
	cmd  string
	arg  string
	want string
}

func parseTranscript(text string) ([]block, error) {
	lines := strings.Split(text, "\n")
	var blocks []block
	var pre []string
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if strings.TrimSpace(l) == "" || strings.HasPrefix(l, "#") {
			pre = append(pre, l)
			continue
		}
		b := block{pre: pre, line: i + 1}
		pre = nil
		b.cmd, b.arg, _ = strings.Cut(l, " ")
		b.arg = strings.TrimSpace(b.arg)
		if i+1 >= len(lines) || lines[i+1] != "----" {
			return nil, fmt.Errorf("line %d: command without ---- after it", i+1)
		}
		i += 2
		var want strings.Builder
		for ; i < len(lines) && lines[i] != ""; i++ {
			want.WriteString(lines[i] + "\n")
		}
		i-- // the blank line (or the end) is read as pre of the next block
		b.want = want.String()
		blocks = append(blocks, b)
	}
	return blocks, nil
}

func TestTranscripts(t *testing.T) {
	files, err := filepath.Glob("testdata/*.txt")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no transcripts in testdata")
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".txt"), func(t *testing.T) {
			text, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			blocks, err := parseTranscript(string(text))
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			s := newScript()
			var rewritten strings.Builder
			for _, b := range blocks {
				got, err := s.run(b.cmd, b.arg)
				if err != nil {
					t.Fatalf("%s:%d: %v", f, b.line, err)
				}
				if got != b.want && !*rewrite {
					t.Errorf("%s:%d: %s %s\ngot:\n%swant:\n%s", f, b.line, b.cmd, b.arg, got, b.want)
				}
				for _, p := range b.pre {
					rewritten.WriteString(p + "\n")
				}
				fmt.Fprintf(&rewritten, "%s\n----\n%s", strings.TrimSpace(b.cmd+" "+b.arg), got)
			}
			if *rewrite {
				out := strings.TrimRight(rewritten.String(), "\n") + "\n"
				if err := os.WriteFile(f, []byte(out), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}
