package agent

import (
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

	"github.com/fogmesh/fogmesh/internal/testenv"
)

// startMosquitto runs a real mosquitto broker on a free loopback port.
func startMosquitto(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	conf := filepath.Join(t.TempDir(), "mosquitto.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\npersistence false\n", port)), 0o644)
	cmd := exec.Command("mosquitto", "-c", conf)
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
	return port
}

// subscribe runs mosquitto_sub directly against a broker and returns a func
// that waits for it and returns what it printed.
func subscribe(t *testing.T, port int, topic string) func() string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	cmd := exec.CommandContext(ctx, "mosquitto_sub", "-h", "127.0.0.1", "-p", fmt.Sprint(port), "-t", topic, "-v", "-W", "4")
	var out strings.Builder
	var mu sync.Mutex
	cmd.Stdout = writerFunc(func(b []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return out.Write(b) })
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return func() string {
		cmd.Wait()
		cancel()
		mu.Lock()
		defer mu.Unlock()
		return out.String()
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
	waitFor(t, "listener", func() bool {
		c, err := net.Dial("tcp", vip+":18830")
		if err == nil {
			c.Close()
		}
		return err == nil
	})

	ids := []string{"sensor-1", "sensor-2", "sensor-3", "sensor-4", "sensor-5", "sensor-6"}
	w1, w2 := subscribe(t, b1, "t/#"), subscribe(t, b2, "t/#")
	time.Sleep(500 * time.Millisecond) // let the subscriptions settle
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

	// A connection that does not start with a valid CONNECT gets a refusal.
	c, err := net.Dial("tcp", vip+":18830")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte{0x10, 0x05, 0, 4, 'M', 'Q', 'T'}) // truncated inside the protocol name... then garbage
	c.Write([]byte{0xff})
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 8)
	n, _ := c.Read(buf)
	if n < 4 || buf[0] != 0x20 || buf[3] == 0 {
		t.Fatalf("want a refusing CONNACK, got % x", buf[:n])
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
	waitFor(t, "listener", func() bool {
		c, err := net.Dial("tcp", vip+":18831")
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	sub := exec.CommandContext(ctx, "mosquitto_sub", "-h", vip, "-p", "18831", "-V", "mqttv5", "-t", "sensors/#", "-C", "2", "-v")
	var out strings.Builder
	sub.Stdout = &out
	if err := sub.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	for i, topic := range []string{"sensors/temp", "sensors/temp"} {
		if o, err := exec.Command("mosquitto_pub", "-h", vip, "-p", "18831", "-t", topic, "-m", fmt.Sprint(i)).CombinedOutput(); err != nil {
			t.Fatalf("pub: %v %s", err, o)
		}
	}
	if err := sub.Wait(); err != nil {
		t.Fatalf("subscriber through the inspecting agent: %v (got %q)", err, out.String())
	}
	if out.String() != "sensors/temp 0\nsensors/temp 1\n" {
		t.Fatalf("subscriber got %q", out.String())
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
