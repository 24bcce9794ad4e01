package agent

import (
	"bytes"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMQTTKeepAliveWithHungBroker: a client that goes silent while its
// broker hangs (a real mosquitto, stopped with SIGSTOP, so that only the
// agent can end the connection) is disconnected by the agent at 1.5 times
// its keep alive, as the broker would have: on a spliced MQTT 3.1.1
// connection (the idle timeout, fogmesh_agent_idle_timeouts_total) and on
// an inspected MQTT 5 one (DISCONNECT 0x8D Keep Alive timeout,
// fogmesh_mqtt_keepalive_timeouts_total), and on a spliced MQTT 5
// connection whose client asked for 60 s and got 10 s in the broker's
// CONNACK (Server Keep Alive, mosquitto's max_keepalive 10): the keep
// alive in force is the broker's.
func TestMQTTKeepAliveWithHungBroker(t *testing.T) {
	needMosquitto(t)
	port, broker := startMosquittoProc(t, "max_keepalive 10") // mosquitto's least
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: plainmq, namespace: demo}
spec:
  ports: [{name: web, port: 18861, protocol: mqtt}]
---
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: inspmq, namespace: demo}
spec:
  ports: [{name: web, port: 18862, protocol: mqtt}]
  mqttInspect: true
---
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: plainmq5, namespace: demo}
spec:
  ports: [{name: web, port: 18863, protocol: mqtt}]
`)
	a := startAgent(t, agentOpts{name: "keep", site: "s1", region: "r1", vipOctet: 95, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{webWorkload("plainmq", "plainmq-1", port), webWorkload("inspmq", "inspmq-1", port), webWorkload("plainmq5", "plainmq5-1", port)}})
	waitFor(t, "endpoints", func() bool {
		return len(endpointsOf(a, "demo/plainmq")) == 1 && len(endpointsOf(a, "demo/inspmq")) == 1 && len(endpointsOf(a, "demo/plainmq5")) == 1
	})
	addrs := map[string]string{"18861": vipOf(t, a, "demo/plainmq") + ":18861", "18862": vipOf(t, a, "demo/inspmq") + ":18862",
		"18863": vipOf(t, a, "demo/plainmq5") + ":18863"}
	for _, addr := range addrs {
		waitFor(t, "listener "+addr, func() bool {
			c, err := net.Dial("tcp", addr)
			if err == nil {
				c.Close()
			}
			return err == nil
		})
	}
	// connected dials port, sends a CONNECT with a keep alive of keep
	// seconds and reads the broker's CONNACK.
	connected := func(port string, version, keep byte) net.Conn {
		c, err := net.Dial("tcp", addrs[port])
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		var connect []byte
		if version == 5 {
			connect = mqttPkt(0x10, mqttStr("MQTT"), []byte{5, 0x02, 0, keep, 0}, mqttStr("keep-"+port))
		} else {
			connect = mqttPkt(0x10, mqttStr("MQTT"), []byte{4, 0x02, 0, keep}, mqttStr("keep-"+port))
		}
		c.Write(connect)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		head := make([]byte, 2)
		if _, err := io.ReadFull(c, head); err != nil || head[0] != 0x20 {
			t.Fatalf("CONNACK: % x %v", head, err)
		}
		if _, err := io.ReadFull(c, make([]byte, head[1])); err != nil { // short CONNACKs: one length byte
			t.Fatal(err)
		}
		return c
	}
	began := time.Now() // before the last byte either client sends or gets
	plain, insp, plain5 := connected("18861", 4, 1), connected("18862", 5, 1), connected("18863", 5, 60)
	if err := broker.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { broker.Signal(syscall.SIGCONT) })
	// The clients now say nothing; the broker cannot end any of them.
	for _, c := range []struct {
		name  string
		conn  net.Conn
		want  []byte
		after time.Duration // 1.5 times the keep alive in force
	}{
		{"spliced 3.1.1", plain, nil, 1500 * time.Millisecond},
		{"inspected 5", insp, []byte{0xe0, 1, 0x8d}, 1500 * time.Millisecond},
		{"spliced 5 (Server Keep Alive 10 s)", plain5, nil, 15 * time.Second},
	} {
		c.conn.SetReadDeadline(began.Add(c.after + 10*time.Second))
		got, err := io.ReadAll(c.conn)
		if err != nil {
			t.Fatalf("%s: the agent did not end the silent client's connection: %v", c.name, err)
		}
		if !bytes.Equal(got, c.want) {
			t.Fatalf("%s: client got % x, want % x", c.name, got, c.want)
		}
		if took := time.Since(began); took < c.after {
			t.Fatalf("%s: disconnected after %v, before %v", c.name, took, c.after)
		}
	}
	waitFor(t, "the metrics", func() bool {
		var m strings.Builder
		a.cfg.Metrics.WritePrometheus(&m)
		return strings.Contains(m.String(), `fogmesh_agent_idle_timeouts_total{service="demo/plainmq"} 1`) &&
			strings.Contains(m.String(), `fogmesh_agent_idle_timeouts_total{service="demo/plainmq5"} 1`) &&
			strings.Contains(m.String(), `fogmesh_mqtt_keepalive_timeouts_total{service="demo/inspmq"} 1`)
	})
}
