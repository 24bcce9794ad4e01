package agent

import (
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/testenv"
)

// TestStaticEndpointsAuthorized (issue 9, finding 11): a static endpoint
// (applied with 'fogmesh apply', no agent of its own) is authorized by the
// client's agent, as the destination agent would: per request on HTTP
// (default deny for the namespace, an ALLOW for the frontend, a DENY
// rule), per connection on TCP, per topic on MQTT.
func TestStaticEndpointsAuthorized(t *testing.T) {
	cp := startControl(t, t.TempDir(), "")
	webPort, _ := startHTTP(t, "legacy")
	db := startEcho(t, "db", "127.0.0.1:0")
	mqttOK := true
	for _, bin := range []string{"mosquitto", "mosquitto_pub"} {
		if _, err := exec.LookPath(bin); err != nil {
			mqttOK = false
		}
	}
	if !mqttOK && testenv.InCI() {
		t.Fatal("mosquitto not installed; CI must have it (make test installs mosquitto and mosquitto-clients)")
	}
	static := func(svc, port string, n int) string {
		return fmt.Sprintf(`apiVersion: fogmesh.io/v1alpha1
kind: Endpoint
metadata: {name: %s-static, namespace: legacy}
spec: {service: %s, address: 127.0.0.1, ports: [{name: %s, port: %d}]}`, svc, svc, port, n)
	}
	docs := []string{`apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: web, namespace: legacy}
spec: {ports: [{name: http, port: 19681, protocol: http}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: db, namespace: legacy}
spec: {ports: [{name: tcp, port: 19682}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: broker, namespace: legacy}
spec: {ports: [{name: mqtt, port: 19683, protocol: mqtt}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: default-deny, namespace: legacy}
spec: {}
---
apiVersion: fogmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-frontend, namespace: legacy}
spec: {service: web, rules: [{from: [{principals: ["` + frontendID + `"]}], to: [{paths: ["/api/*"]}]}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-no-admin, namespace: legacy}
spec: {service: web, action: DENY, rules: [{to: [{paths: ["/api/admin/*"]}]}, {when: [{key: "request.headers[host]", values: ["admin.legacy*"]}]}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: db-frontend, namespace: legacy}
spec: {service: db, rules: [{from: [{principals: ["` + frontendID + `"]}]}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: broker-topics, namespace: legacy}
spec: {service: broker, rules: [{to: [{publish: ["sensors/+/temp"]}]}]}`,
		static("web", "http", webPort), static("db", "tcp", db.port())}
	if mqttOK {
		docs = append(docs, static("broker", "mqtt", startMosquitto(t)))
	}
	apply(t, cp, strings.Join(docs, "\n---\n"))
	cli := startAgent(t, agentOpts{name: "cli", site: "s1", region: "r1", vipOctet: 248, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{identityWorkload("frontend", frontendIP), identityWorkload("intruder", intruderIP)}})
	svcs := []string{"legacy/web", "legacy/db"}
	if mqttOK {
		svcs = append(svcs, "legacy/broker")
	}
	for _, s := range svcs {
		waitFor(t, s+"'s static endpoint on the client node", func() bool { return len(endpointsOf(cli, s)) == 1 })
	}
	waitFor(t, "policies", func() bool { return cli.view.Load().authz.Len() == 5 })
	vip := func(name string, port int) string {
		r, ok := cli.LookupService("legacy", name)
		if !ok {
			t.Fatalf("no VIP for %s", name)
		}
		return fmt.Sprintf("%s:%d", r.V4, port)
	}
	web, dbAddr := vip("web", 19681), vip("db", 19682)
	waitListening(t, dbAddr)

	t.Run("http", func(t *testing.T) {
		for _, c := range []struct {
			ip, path string
			code     int
		}{
			{frontendIP, "/api/orders", 200},
			{frontendIP, "/api/admin/users", 403}, // the DENY rule
			{frontendIP, "/other", 403},           // no ALLOW matches
			{intruderIP, "/api/orders", 403},      // default deny
		} {
			code, body := httpGetFrom(t, c.ip, "http://"+web+c.path)
			if code != c.code || c.code == 200 && body != "legacy HTTP/1.1" || c.code == 403 && !strings.Contains(body, "RBAC: access denied") {
				t.Errorf("%s GET %s: %d %q, want %d", c.ip, c.path, code, body, c.code)
			}
		}
		// The DENY rule on request.headers[host], decided by this agent
		// for the static endpoint (before, it never matched).
		for host, want := range map[string]int{"admin.legacy": 403, "admin.legacy:8080": 403, "web.legacy": 200} {
			req, _ := http.NewRequest("GET", "http://"+web+"/api/orders", nil)
			req.Host = host
			c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: dialFrom(frontendIP)}}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatalf("Host %s: %v", host, err)
			}
			resp.Body.Close()
			c.CloseIdleConnections()
			if resp.StatusCode != want {
				t.Errorf("frontend GET /api/orders, Host %s: %d, want %d", host, resp.StatusCode, want)
			}
		}
	})

	t.Run("tcp", func(t *testing.T) {
		if got, err := echoFrom(frontendIP, dbAddr); err != nil || got != "db: ping" {
			t.Fatalf("frontend: %q %v", got, err)
		}
		before := db.accepted()
		if got, err := echoFrom(intruderIP, dbAddr); err == nil || got != "" {
			t.Fatalf("intruder: %q %v, want the connection closed", got, err)
		}
		if n := db.accepted() - before; n != 0 {
			t.Fatalf("the intruder's connection reached the backend (%d connections)", n)
		}
	})

	t.Run("mqtt", func(t *testing.T) {
		if !mqttOK {
			t.Skip("mosquitto not installed (make test installs mosquitto and mosquitto-clients)")
		}
		host, port, _ := net.SplitHostPort(vip("broker", 19683))
		pub := func(topic string) error {
			out, err := exec.Command("mosquitto_pub", "-h", host, "-p", port, "-A", frontendIP, "-V", "mqttv311", "-q", "1",
				"-t", topic, "-m", "21.5").CombinedOutput()
			if err != nil {
				return fmt.Errorf("%w: %s", err, out)
			}
			return nil
		}
		if err := pub("sensors/a/temp"); err != nil {
			t.Fatalf("allowed topic: %v", err)
		}
		if err := pub("actuators/a/valve"); err == nil {
			t.Fatal("denied topic: published")
		}
	})

	var m strings.Builder
	cli.cfg.Metrics.WritePrometheus(&m)
	for _, want := range []string{
		`fogmesh_authz_decisions_total{decision="deny",service="legacy/web",policy="legacy/web-no-admin"} 3`, // /api/admin, and two on Host
		`fogmesh_authz_decisions_total{decision="deny",service="legacy/db",policy="none"}`,
	} {
		if !strings.Contains(m.String(), want) {
			t.Errorf("no %s in the client agent's metrics:\n%s", want, grepLines(m.String(), "authz"))
		}
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
