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
// fogmesh_mqtt_keepalive_timeouts_total).
func TestMQTTKeepAliveWithHungBroker(t *testing.T) {
	needMosquitto(t)
	port, broker := startMosquittoProc(t)
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
`)
	a := startAgent(t, agentOpts{name: "keep", site: "s1", region: "r1", vipOctet: 95, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{webWorkload("plainmq", "plainmq-1", port), webWorkload("inspmq", "inspmq-1", port)}})
	waitFor(t, "endpoints", func() bool {
		return len(endpointsOf(a, "demo/plainmq")) == 1 && len(endpointsOf(a, "demo/inspmq")) == 1
	})
	addrs := map[string]string{"18861": vipOf(t, a, "demo/plainmq") + ":18861", "18862": vipOf(t, a, "demo/inspmq") + ":18862"}
	for _, addr := range addrs {
		waitFor(t, "listener "+addr, func() bool {
			c, err := net.Dial("tcp", addr)
			if err == nil {
				c.Close()
			}
			return err == nil
		})
	}
	// connected dials port, sends a CONNECT with a keep alive of 1 s and
	// reads the broker's CONNACK.
	connected := func(port string, version byte) net.Conn {
		c, err := net.Dial("tcp", addrs[port])
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		var connect []byte
		if version == 5 {
			connect = mqttPkt(0x10, mqttStr("MQTT"), []byte{5, 0x02, 0, 1, 0}, mqttStr("keep-"+port))
		} else {
			connect = mqttPkt(0x10, mqttStr("MQTT"), []byte{4, 0x02, 0, 1}, mqttStr("keep-"+port))
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
	plain, insp := connected("18861", 4), connected("18862", 5)
	if err := broker.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { broker.Signal(syscall.SIGCONT) })
	// Both clients now say nothing; the broker cannot end either.
	for _, c := range []struct {
		name string
		conn net.Conn
		want []byte
	}{{"spliced 3.1.1", plain, nil}, {"inspected 5", insp, []byte{0xe0, 1, 0x8d}}} {
		c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		got, err := io.ReadAll(c.conn)
		if err != nil {
			t.Fatalf("%s: the agent did not end the silent client's connection: %v", c.name, err)
		}
		if !bytes.Equal(got, c.want) {
			t.Fatalf("%s: client got % x, want % x", c.name, got, c.want)
		}
	}
	if took := time.Since(began); took < 1500*time.Millisecond {
		t.Fatalf("clients with a keep alive of 1 s disconnected after %v, before 1.5 s", took)
	}
	waitFor(t, "the metrics", func() bool {
		var m strings.Builder
		a.cfg.Metrics.WritePrometheus(&m)
		return strings.Contains(m.String(), `fogmesh_agent_idle_timeouts_total{service="demo/plainmq"} 1`) &&
			strings.Contains(m.String(), `fogmesh_mqtt_keepalive_timeouts_total{service="demo/inspmq"} 1`)
	})
}
