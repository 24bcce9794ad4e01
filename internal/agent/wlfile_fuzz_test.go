package agent

import (
	"encoding/json"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/fogmesh/fogmesh/internal/testenv"
)

// FuzzRegisteredWorkloads: the registered workloads file (workloads.json,
// read back at start by loadRegistered) is a list of workloads each
// normalized again as it loads: what normalizes is what was saved, so a
// workload saved and loaded again (as JSON or YAML) is the same workload,
// and an entry that does not normalize is skipped with a warning
// (loadRegistered), never a panic.
func FuzzRegisteredWorkloads(f *testing.F) {
	f.Add([]byte(`[{"name":"orders-n1","service":"orders","namespace":"shop","serviceAccount":"orders","labels":{"version":"v2"},"address":"127.0.0.1","ports":[{"name":"http","port":8080}],"check":{"type":"http","path":"/healthz","port":"http","timeout":"1s"}}]`))
	f.Add([]byte(`[{"service":"x","address":"::1","ports":[{"port":1},{"name":"b","port":2,"protocol":"udp"}],"check":{"type":"grpc","grpcService":"x.v1"},"attest":{"uid":0}}]`))
	f.Add([]byte(`[{"service":"x","labels":{},"ports":[{"port":70000}]},{"service":"x","ports":[{"port":1}],"check":{"timeout":"0s"}}]`))
	f.Add([]byte(`[{"service":"x","ports":[{"port":1}],"check":{"port":"nope"}}]`))
	f.Add([]byte(`[{}]`))
	f.Add([]byte(`null`))
	f.Add([]byte(`[`))
	decode := func(b []byte, v any) error {
		if err := yaml.Unmarshal(b, v); err != nil {
			return err
		}
		return v.(*Workload).normalize("n1")
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var ws []Workload
		if json.Unmarshal(b, &ws) != nil {
			return
		}
		for i := range ws {
			if ws[i].normalize("n1") != nil {
				continue
			}
			testenv.ConfigRoundTrip(t, &ws[i], decode)
		}
	})
}
