package agent

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/authz"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// startMosquitto runs a real mosquitto broker on a free loopback port.
func startMosquitto(t *testing.T) int {
	t.Helper()
	port, _ := startMosquittoProc(t)
	return port
}

// startMosquittoProc is startMosquitto, also returning the broker's
// process (a test may stop it).
func startMosquittoProc(t *testing.T, conf ...string) (int, *os.Process) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	file := filepath.Join(t.TempDir(), "mosquitto.conf")
	lines := append([]string{fmt.Sprintf("listener %d 127.0.0.1", port), "allow_anonymous true", "persistence false"}, conf...)
	os.WriteFile(file, []byte(strings.Join(lines, "\n")+"\n"), 0o644)
	cmd := exec.Command("mosquitto", "-c", file)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitFor(t, "mosquitto", func() bool {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return port, cmd.Process
}

// subscribe runs mosquitto_sub directly against a broker and returns a func
// that waits for it and returns what it printed.
func subscribe(t *testing.T, port int, topic string) func() string {
	t.Helper()
	return subscribeAt(t, "127.0.0.1", port, 6, "-t", topic)
}

// subscribeAt runs mosquitto_sub against host:port for waitSec seconds
// with the extra arguments, and returns once the broker has acknowledged
// the subscription (no message can be missed after that). The returned
// function waits for it to end and gives its messages ("topic payload"
// lines; the debug lines used to see the SUBACK are left out).
func subscribeAt(t *testing.T, host string, port, waitSec int, args ...string) func() string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(waitSec+10)*time.Second)
	// stdbuf: mosquitto_sub's debug lines are block-buffered on a pipe.
	cmd := exec.CommandContext(ctx, "stdbuf", append([]string{"-oL", "mosquitto_sub", "-h", host, "-p", fmt.Sprint(port), "-v", "-d", "-W", fmt.Sprint(waitSec)}, args...)...)
	var out strings.Builder
	var mu sync.Mutex
	subscribed := make(chan struct{})
	var once sync.Once
	cmd.Stdout = writerFunc(func(b []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		out.Write(b)
		if strings.Contains(out.String(), "received SUBACK") {
			once.Do(func() { close(subscribed) })
		}
		return len(b), nil
	})
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-subscribed:
	case <-done:
		t.Fatalf("mosquitto_sub ended before its SUBACK: %q", out.String())
	case <-time.After(10 * time.Second):
		t.Fatalf("no SUBACK for mosquitto_sub in 10 s: %q", out.String())
	}
	return func() string {
		<-done
		mu.Lock()
		defer mu.Unlock()
		var msgs strings.Builder
		for _, line := range strings.SplitAfter(out.String(), "\n") {
			if line != "" && !strings.HasPrefix(line, "Client ") && !strings.HasPrefix(line, "Subscribed ") {
				msgs.WriteString(line)
			}
		}
		return msgs.String()
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

// TestMQTTClientIDPinning: two real mosquitto brokers behind the mesh; each
// client id always lands on the same broker, different ids spread, MQTT 3.1.1
// and 5 both work, and a garbage CONNECT gets a CONNACK refusal.
func TestMQTTClientIDPinning(t *testing.T) {
	for _, bin := range []string{"mosquitto", "mosquitto_pub", "mosquitto_sub"} {
		testenv.NeedTool(t, bin)
	}
	b1, b2 := startMosquitto(t), startMosquitto(t)
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, httpSvcDoc("broker", 18830, "mqtt"))
	startAgent(t, agentOpts{name: "mq", site: "s1", region: "r1", vipOctet: 172, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{webWorkload("broker", "broker-b1", b1), webWorkload("broker", "broker-b2", b2)}})
	client := startAgent(t, agentOpts{name: "mqc", site: "s1", region: "r1", vipOctet: 173, control: []string{cp.SyncAddr()}, stateDir: t.TempDir()})
	waitFor(t, "endpoints", func() bool { return len(endpointsOf(client, "demo/broker")) == 2 })
	vip := "127.173.0.1"
	waitListening(t, vip+":18830")

	ids := []string{"sensor-1", "sensor-2", "sensor-3", "sensor-4", "sensor-5", "sensor-6"}
	w1, w2 := subscribe(t, b1, "t/#"), subscribe(t, b2, "t/#")
	for round := 0; round < 3; round++ {
		for i, id := range ids {
			v := []string{"mqttv311", "mqttv5"}[i%2]
			out, err := exec.Command("mosquitto_pub", "-h", vip, "-p", "18830", "-i", id, "-V", v,
				"-t", "t/"+id, "-m", fmt.Sprint(round)).CombinedOutput()
			if err != nil {
				t.Fatalf("mosquitto_pub %s: %v %s", id, err, out)
			}
		}
	}
	got1, got2 := w1(), w2()
	on := map[string]string{}
	for broker, out := range map[string]string{"b1": got1, "b2": got2} {
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			if line == "" {
				continue
			}
			id := strings.TrimPrefix(strings.Fields(line)[0], "t/")
			if prev, ok := on[id]; ok && prev != broker {
				t.Fatalf("client %s reached both brokers:\nb1:\n%s\nb2:\n%s", id, got1, got2)
			}
			on[id] = broker
		}
	}
	if len(on) != len(ids) || strings.Count(got1+got2, "\n") != 3*len(ids) {
		t.Fatalf("messages lost: b1:\n%s\nb2:\n%s", got1, got2)
	}
	if !strings.Contains(got1, "t/") || !strings.Contains(got2, "t/") {
		t.Fatalf("all client ids pinned to one broker: b1:\n%s\nb2:\n%s", got1, got2)
	}

	// A CONNECT of an unknown protocol gets a refusal (the others:
	// TestMQTTRefusalsLikeMosquitto).
	if got := exchange(t, vip+":18830", mqttPkt(0x10, mqttStr("MQTX"), []byte{4, 2, 0, 30}, mqttStr("x"))); !bytes.Equal(got, []byte{0x20, 2, 0, 1}) {
		t.Fatalf("want CONNACK 0x01, got % x", got)
	}
}

// TestMQTTInspectCountsTopics: with mqttInspect, the agent parses client
// packets after CONNECT and counts PUBLISH and SUBSCRIBE per topic, while
// messages still flow both ways through it (subscriber and publisher both
// connect through the mesh to a real mosquitto).
func TestMQTTInspectCountsTopics(t *testing.T) {
	for _, bin := range []string{"mosquitto", "mosquitto_pub", "mosquitto_sub"} {
		testenv.NeedTool(t, bin)
	}
	b := startMosquitto(t)
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: telemetry, namespace: demo}
spec:
  ports: [{name: web, port: 18831, protocol: mqtt}]
  mqttInspect: true
`)
	a := startAgent(t, agentOpts{name: "insp", site: "s1", region: "r1", vipOctet: 198, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{webWorkload("telemetry", "telemetry-b", b)}})
	waitFor(t, "endpoint", func() bool { return len(endpointsOf(a, "demo/telemetry")) == 1 })
	vip := "127.198.0.1"
	waitListening(t, vip+":18831")
	sub := subscribeAt(t, vip, 18831, 20, "-V", "mqttv5", "-t", "sensors/#", "-C", "2")
	for i, topic := range []string{"sensors/temp", "sensors/temp"} {
		if o, err := exec.Command("mosquitto_pub", "-h", vip, "-p", "18831", "-t", topic, "-m", fmt.Sprint(i)).CombinedOutput(); err != nil {
			t.Fatalf("pub: %v %s", err, o)
		}
	}
	if got := sub(); got != "sensors/temp 0\nsensors/temp 1\n" {
		t.Fatalf("subscriber through the inspecting agent got %q", got)
	}
	var m strings.Builder
	a.cfg.Metrics.WritePrometheus(&m)
	for _, want := range []string{
		`fogmesh_mqtt_messages_total{service="demo/telemetry",kind="publish",topic="sensors/temp"} 2`,
		`fogmesh_mqtt_messages_total{service="demo/telemetry",kind="subscribe",topic="sensors/#"} 1`,
	} {
		if !strings.Contains(m.String(), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	// A malformed packet after a valid MQTT 5 CONNECT: DISCONNECT 0x81.
	c, err := net.Dial("tcp", vip+":18831")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	connect5 := []byte{0x10, 0x10, 0, 4, 'M', 'Q', 'T', 'T', 5, 0x02, 0, 30, 0, 0, 3, 'b', 'a', 'd'}
	connect5[1] = byte(len(connect5) - 2)
	c.Write(connect5)
	c.Write([]byte{0x30, 0x05, 0x00, 0xff, 'x', 'y', 'z'}) // PUBLISH whose topic length overruns the packet
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, _ := io.ReadAll(c)
	if !bytes.Contains(got, []byte{0xe0, 0x01, 0x81}) {
		t.Fatalf("want DISCONNECT 0x81 after a malformed PUBLISH, got % x", got)
	}
}

func needMosquitto(t *testing.T) {
	t.Helper()
	for _, bin := range []string{"mosquitto", "mosquitto_pub", "mosquitto_sub"} {
		testenv.NeedTool(t, bin)
	}
}

// mqttPkt builds an MQTT packet from its first byte and body fields.
func mqttPkt(first byte, fields ...[]byte) []byte {
	b := bytes.Join(fields, nil)
	out := []byte{first}
	for n := len(b); ; {
		c := byte(n % 128)
		if n /= 128; n > 0 {
			c |= 0x80
		}
		out = append(out, c)
		if n == 0 {
			break
		}
	}
	return append(out, b...)
}

// mqttStr is an MQTT string field.
func mqttStr(s string) []byte { return append([]byte{byte(len(s) >> 8), byte(len(s))}, s...) }

// exchange sends b on a new connection to addr and returns all the server
// answered until it closed the connection (or 5 s passed).
func exchange(t *testing.T, addr string, b []byte) []byte {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(b)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(c)
	if err, ok := err.(net.Error); ok && err.Timeout() {
		t.Fatalf("%s kept the connection open after % x: %v (read % x)", addr, b, err, got)
	}
	return got
}

// firstPackets sends b on a new connection to addr and returns the first
// bytes of the first n packets the server answers.
func firstPackets(t *testing.T, addr string, b []byte, n int) []byte {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(b)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(c)
	var first []byte
	for i := 0; i < n; i++ {
		t0, err := r.ReadByte()
		if err != nil {
			t.Fatalf("%s: packet %d: %v", addr, i, err)
		}
		first = append(first, t0)
		size, shift := 0, 0
		for j := 0; j < 4; j++ {
			c, err := r.ReadByte()
			if err != nil {
				t.Fatalf("%s: packet %d: %v", addr, i, err)
			}
			size |= int(c&0x7f) << shift
			shift += 7
			if c&0x80 == 0 {
				break
			}
		}
		if _, err := r.Discard(size); err != nil {
			t.Fatalf("%s: packet %d: %v", addr, i, err)
		}
	}
	return first
}

// TestMQTTRefusalsLikeMosquitto: every CONNECT the agent refuses gets the
// answer MQTT 3.1.1 and 5 specify, which is what a real mosquitto sends
// for the same bytes, except where the specification lets a server say
// why and mosquitto says nothing (marked).
func TestMQTTRefusalsLikeMosquitto(t *testing.T) {
	needMosquitto(t)
	b := startMosquitto(t)
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, httpSvcDoc("refusals", 18850, "mqtt"))
	a := startAgent(t, agentOpts{name: "refusals", site: "s1", region: "r1", vipOctet: 248, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{webWorkload("refusals", "refusals-b", b)}})
	waitFor(t, "endpoint", func() bool { return len(endpointsOf(a, "demo/refusals")) == 1 })
	vip := "127.248.0.1:18850"
	waitListening(t, vip)
	connect := func(name string, level, flags byte, fields ...[]byte) []byte {
		return mqttPkt(0x10, append([][]byte{mqttStr(name), {level, flags, 0, 30}}, fields...)...)
	}
	for _, c := range []struct {
		name string
		in   []byte
		want []byte
		// mosquitto: what mosquitto 2.0 answers when it differs (nil: the same)
		mosquitto []byte
	}{
		// MQTT 3.1.1 §3.1.2.2: an unsupported level gets 0x01 (whatever the level).
		{"MQTT level 9", connect("MQTT", 9, 2, mqttStr("x")), []byte{0x20, 2, 0, 1}, nil},
		{"MQTT level 3", connect("MQTT", 3, 2, mqttStr("x")), []byte{0x20, 2, 0, 1}, nil},
		{"MQIsdp level 4", connect("MQIsdp", 4, 2, mqttStr("x")), []byte{0x20, 2, 0, 1}, nil},
		// MQTT 5 §3.1.2.1 lets a server answer a wrong name with "unsupported
		// protocol version"; mosquitto closes without a word.
		{"protocol name MQTX", connect("MQTX", 4, 2, mqttStr("x")), []byte{0x20, 2, 0, 1}, []byte{}},
		// 3.1.1 §4.8: a malformed CONNECT is closed, no return code exists.
		{"3.1.1 reserved flag", connect("MQTT", 4, 3, mqttStr("x")), []byte{}, nil},
		{"3.1.1 client id not UTF-8", connect("MQTT", 4, 2, mqttStr("\xff")), []byte{}, nil},
		{"3.1.1 will topic with a wildcard", connect("MQTT", 4, 6, mqttStr("x"), mqttStr("a/#"), mqttStr("m")), []byte{}, nil},
		{"3.1.1 bytes after the payload", connect("MQTT", 4, 2, mqttStr("x"), []byte("zz")), []byte{}, nil},
		{"3.1 truncated", connect("MQIsdp", 3, 2), []byte{}, nil},
		{"not a CONNECT", []byte{0x30, 3, 0, 1, 'a'}, []byte{}, nil},
		// MQTT 5 §4.13: a malformed CONNECT MAY get CONNACK 0x81, a protocol
		// error 0x82; mosquitto closes without a word.
		{"5 reserved flag", connect("MQTT", 5, 3, []byte{0}, mqttStr("x")), []byte{0x20, 3, 0, 0x81, 0}, []byte{}},
		{"5 property not allowed in CONNECT", connect("MQTT", 5, 2, []byte{3, 0x23, 0, 1}, mqttStr("x")), []byte{0x20, 3, 0, 0x82, 0}, []byte{}},
	} {
		mosq := c.mosquitto
		if mosq == nil {
			mosq = c.want
		}
		if got := exchange(t, fmt.Sprintf("127.0.0.1:%d", b), c.in); !bytes.Equal(got, mosq) {
			t.Errorf("%s: mosquitto answered % x, the test expects % x", c.name, got, mosq)
		}
		if got := exchange(t, vip, c.in); !bytes.Equal(got, c.want) {
			t.Errorf("%s: the agent answered % x, want % x", c.name, got, c.want)
		}
	}
}

// brokerWatch records every message a real mosquitto broker delivers (a
// mosquitto_sub on "#" connected to it directly, past the mesh).
type brokerWatch struct {
	port  int
	mu    sync.Mutex
	lines []string
	seen  int // lines returned by mark so far
	marks int
}

func watchBroker(t *testing.T, port int) *brokerWatch {
	t.Helper()
	w := &brokerWatch{port: port}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, "mosquitto_sub", "-h", "127.0.0.1", "-p", fmt.Sprint(port), "-t", "#", "-v")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			w.mu.Lock()
			w.lines = append(w.lines, sc.Text())
			w.mu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); <-done; cmd.Wait() })
	w.mark(t) // subscribed once a message published after it arrives
	return w
}

// mark publishes a marker straight to the broker, waits until the watcher
// has it, and returns the messages delivered before it since the last
// mark. mosquitto delivers one subscriber's messages in the order it
// handles them, and a message published through the mesh by a client that
// has exited was handled before the marker.
func (w *brokerWatch) mark(t *testing.T) []string {
	t.Helper()
	w.marks++
	marker := fmt.Sprintf("fogmesh-test/mark %d", w.marks)
	waitFor(t, "the watcher to see "+marker, func() bool {
		w.mu.Lock()
		for _, l := range w.lines[w.seen:] {
			if l == marker {
				w.mu.Unlock()
				return true
			}
		}
		w.mu.Unlock()
		exec.Command("mosquitto_pub", "-h", "127.0.0.1", "-p", fmt.Sprint(w.port), "-t", "fogmesh-test/mark", "-m", fmt.Sprint(w.marks)).Run()
		return false
	})
	w.mu.Lock()
	defer w.mu.Unlock()
	var got []string
	for i, l := range w.lines[w.seen:] {
		if l == marker {
			w.seen += i + 1
			break
		}
		if !strings.HasPrefix(l, "fogmesh-test/") {
			got = append(got, l)
		}
	}
	return got
}

// TestMQTTTopicAuthorization: with policies that have topic rules (and no
// mqttInspect), every topic a client can make the broker publish to or
// subscribe it to is authorized, through a local endpoint (the client's
// agent decides) and a remote one (the broker's agent decides): the will
// topic at CONNECT (a denied will is refused with CONNACK 0x05 / 0x87 and
// never reaches the broker, so the deny-and-close of a denied PUBLISH
// cannot make the broker publish it), MQTT 5 topic aliases, shared
// subscriptions, and a will denied by a policy change while connected.
func TestMQTTTopicAuthorization(t *testing.T) {
	needMosquitto(t)
	b := startMosquitto(t)
	w := watchBroker(t, b)
	cp := startControl(t, t.TempDir(), "")
	const plantPolicy = `apiVersion: fogmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: plant-topics, namespace: demo}
spec: {service: plant, rules: [{to: [{publish: [%s], subscribe: ["sensors/#", "alerts/#"]}]}]}
`
	apply(t, cp, `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: plant, namespace: demo}
spec: {ports: [{name: mqtt, port: 18851, protocol: mqtt}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: vault, namespace: demo}
spec: {ports: [{name: mqtt, port: 18852, protocol: mqtt}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: closed, namespace: demo}
spec: {ports: [{name: mqtt, port: 18853, protocol: mqtt}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: closed-nobody, namespace: demo}
spec: {service: closed, rules: [{from: [{principals: ["*/sa/nobody"]}]}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: vault-secrets, namespace: demo}
spec: {service: vault, action: DENY, rules: [{to: [{subscribe: ["secrets/#"]}]}]}
---
`+fmt.Sprintf(plantPolicy, `"sensors/+/temperature"`))
	broker := func(svc string) Workload {
		return Workload{Name: svc + "-b", Service: svc, Namespace: "demo", Ports: []api.EndpointPort{{Name: "mqtt", Port: b}}}
	}
	srv := startAgent(t, agentOpts{name: "mqsrv", site: "s1", region: "r1", vipOctet: 246, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{broker("plant"), broker("vault"), broker("closed")}})
	cli := startAgent(t, agentOpts{name: "mqcli", site: "s1", region: "r1", vipOctet: 247, control: []string{cp.SyncAddr()}, stateDir: t.TempDir()})
	willDenied := func(a *Agent, topic string) bool {
		return !a.view.Load().authz.Decide(&authz.Request{Namespace: "demo", Service: "plant", Port: "mqtt", PortNumber: 18851,
			Proto: authz.MQTT, MQTT: authz.MQTTPublish, Topic: topic}).Allow
	}
	for _, a := range []*Agent{srv, cli} {
		waitFor(t, "endpoints and policies", func() bool {
			return len(endpointsOf(a, "demo/plant")) == 1 && len(endpointsOf(a, "demo/vault")) == 1 && len(endpointsOf(a, "demo/closed")) == 1 &&
				a.view.Load().authz.Len() == 3
		})
	}
	vip := func(a *Agent, svc string, port int) string {
		r, _ := a.LookupService("demo", svc)
		addr := net.JoinHostPort(fmt.Sprint(r.V4), fmt.Sprint(port))
		waitFor(t, "listener "+addr, func() bool {
			c, err := net.Dial("tcp", addr)
			if err == nil {
				c.Close()
			}
			return err == nil
		})
		return addr
	}
	run := func(name string, stdin string, args ...string) (string, error) {
		cmd := exec.Command(name, args...)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	has := func(lines []string, prefix string) bool {
		for _, l := range lines {
			if strings.HasPrefix(l, prefix) {
				return true
			}
		}
		return false
	}
	for _, path := range []struct {
		name string
		a    *Agent // whose VIP the client connects to
	}{{"local endpoint", srv}, {"remote endpoint", cli}} {
		plant, vault, closed := vip(path.a, "plant", 18851), vip(path.a, "vault", 18852), vip(path.a, "closed", 18853)
		host, port, _ := net.SplitHostPort(plant)
		t.Run(path.name, func(t *testing.T) {
			for _, v := range []string{"mqttv311", "mqttv5"} {
				// The attack: a will on a topic the client may not publish
				// to, then a denied PUBLISH to be cut off.
				out, err := run("mosquitto_pub", "", "-h", host, "-p", port, "-V", v, "-q", "1", "-t", "actuators/valve", "-m", "open",
					"--will-topic", "alerts/fire", "--will-payload", "FIRE")
				if err == nil || !strings.Contains(strings.ToLower(out), "not authori") {
					t.Errorf("%s: a denied will was not refused at CONNECT: %v %s", v, err, out)
				}
				if got := w.mark(t); has(got, "alerts/fire") {
					t.Fatalf("%s: the broker published the denied will: %q", v, got)
				}
				// An allowed will: cut off for a denied PUBLISH, the broker
				// publishes it (the client could always drop its connection).
				out, err = run("mosquitto_pub", "", "-h", host, "-p", port, "-V", v, "-q", "1", "-t", "actuators/valve", "-m", "open",
					"--will-topic", "sensors/w/temperature", "--will-payload", "gone-"+v)
				if err == nil {
					t.Errorf("%s: a denied PUBLISH went through: %s", v, out)
				}
				if got := w.mark(t); !has(got, "sensors/w/temperature gone-"+v) || has(got, "actuators/") {
					t.Errorf("%s: after a cut-off with an allowed will the broker delivered %q", v, got)
				}
			}

			// A connection denied as a whole gets a CONNACK refusal too.
			if got := exchange(t, closed, mqttPkt(0x10, mqttStr("MQTT"), []byte{4, 2, 0, 30}, mqttStr("x"))); !bytes.Equal(got, []byte{0x20, 2, 0, 5}) {
				t.Errorf("3.1.1 connection denied by policy: got % x, want CONNACK 0x05", got)
			}
			if got := exchange(t, closed, mqttPkt(0x10, mqttStr("MQTT"), []byte{5, 2, 0, 30, 0}, mqttStr("x"))); !bytes.Equal(got, []byte{0x20, 3, 0, 0x87, 0}) {
				t.Errorf("MQTT 5 connection denied by policy: got % x, want CONNACK 0x87", got)
			}

			// MQTT 5 topic aliases: the second and third messages name their
			// topic by alias only (mosquitto_pub -l).
			if out, err := run("mosquitto_pub", "1\n2\n3\n", "-h", host, "-p", port, "-V", "mqttv5", "-t", "sensors/a/temperature",
				"-D", "publish", "topic-alias", "1", "-l"); err != nil {
				t.Errorf("publishing by topic alias: %v %s", err, out)
			}
			if got := w.mark(t); strings.Join(got, ",") != "sensors/a/temperature 1,sensors/a/temperature 2,sensors/a/temperature 3" {
				t.Errorf("published by topic alias, the broker delivered %q", got)
			}
			// An alias never set is a protocol error (DISCONNECT 0x82).
			connect5 := mqttPkt(0x10, mqttStr("MQTT"), []byte{5, 2, 0, 30, 0}, mqttStr("alias-probe"))
			unknownAlias := mqttPkt(0x30, mqttStr(""), []byte{3, 0x23, 0, 9}, []byte("x"))
			if got := exchange(t, plant, append(connect5, unknownAlias...)); len(got) < 6 || got[0] != 0x20 || !bytes.HasSuffix(got, []byte{0xe0, 1, 0x82}) {
				t.Errorf("PUBLISH by an unknown alias: got % x, want DISCONNECT 0x82 after the CONNACK", got)
			}

			// Shared subscriptions are authorized as the filter they receive
			// (mosquitto_sub exits 0 whether it gets a SUBACK or is cut off,
			// so a raw client reads the answer).
			subscribe := func(filter string) []byte {
				return mqttPkt(0x82, []byte{0, 1, 0}, mqttStr(filter), []byte{1})
			}
			if first := firstPackets(t, plant, append(connect5, subscribe("$share/g/alerts/#")...), 2); first[1] != 0x90 {
				t.Errorf("shared subscription to an allowed filter: answer type %#x, want SUBACK", first[1])
			}
			if first := firstPackets(t, vault, append(connect5, subscribe("public/#")...), 2); first[1] != 0x90 {
				t.Errorf("subscription no DENY rule names: answer type %#x, want SUBACK", first[1])
			}
			// EMQX's $queue/ and $exclusive/ receive the filter after them:
			// a DENY of that filter denies them, and an ALLOW of it alone
			// does not allow them (both forms are authorized).
			for _, f := range []string{"$share/g/secrets/#", "$queue/secrets/#", "$exclusive/secrets/+"} {
				if got := exchange(t, vault, append(connect5, subscribe(f)...)); len(got) < 6 || got[0] != 0x20 || !bytes.HasSuffix(got, []byte{0xe0, 1, 0x87}) {
					t.Errorf("%s, a shared or exclusive subscription to a denied filter: got % x, want DISCONNECT 0x87 after the CONNACK", f, got)
				}
			}
			if got := exchange(t, plant, append(connect5, subscribe("$queue/alerts/#")...)); len(got) < 6 || got[0] != 0x20 || !bytes.HasSuffix(got, []byte{0xe0, 1, 0x87}) {
				t.Errorf("$queue/alerts/# where only alerts/# is allowed: got % x, want DISCONNECT 0x87 after the CONNACK", got)
			}

			// A will allowed at CONNECT and denied by a policy change while
			// connected: the broker must not publish it when the client is
			// cut off.
			c, err := net.DialTimeout("tcp", plant, 3*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write(mqttPkt(0x10, mqttStr("MQTT"), []byte{4, 0x06, 0, 30}, mqttStr("late-will"), mqttStr("sensors/w/temperature"), mqttStr("late")))
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			ack := make([]byte, 4)
			if _, err := io.ReadFull(c, ack); err != nil || !bytes.Equal(ack, []byte{0x20, 2, 0, 0}) {
				t.Fatalf("CONNACK % x %v", ack, err)
			}
			apply(t, cp, fmt.Sprintf(plantPolicy, `"sensors/+/humidity"`))
			for _, a := range []*Agent{srv, cli} {
				waitFor(t, "the policy change", func() bool { return willDenied(a, "sensors/w/temperature") })
			}
			c.Write(mqttPkt(0x30, mqttStr("sensors/a/temperature"), []byte("21.5")))
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if rest, err := io.ReadAll(c); err != nil {
				t.Errorf("a PUBLISH denied since the policy change did not end the connection: % x %v", rest, err)
			}
			c.Close()
			if got := w.mark(t); has(got, "sensors/w/temperature late") || has(got, "sensors/a/temperature") {
				t.Errorf("after a policy change the broker delivered %q", got)
			}
			apply(t, cp, fmt.Sprintf(plantPolicy, `"sensors/+/temperature"`))
			for _, a := range []*Agent{srv, cli} {
				waitFor(t, "the policy restored", func() bool { return !willDenied(a, "sensors/w/temperature") })
			}
		})
	}
}
