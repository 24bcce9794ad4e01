package api

import (
	"slices"
	"strings"
	"testing"
)

func TestServiceClusterIPs(t *testing.T) {
	doc := func(spec string) string {
		return `{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"web","namespace":"shop"},
		"spec":{"ports":[{"name":"http","port":80}]` + spec + `}}`
	}
	for _, tt := range []struct {
		name    string
		spec    string
		want    []string
		wantErr string
	}{
		{name: "none", spec: ``},
		{name: "clusterIP", spec: `,"clusterIP":"10.96.0.10"`, want: []string{"10.96.0.10"}},
		{name: "dual stack", spec: `,"clusterIP":"10.96.0.10","clusterIPs":["10.96.0.10","fd00::a"]`, want: []string{"10.96.0.10", "fd00::a"}},
		{name: "clusterIPs only", spec: `,"clusterIPs":["fd00::a"]`, want: []string{"fd00::a"}},
		{name: "headless", spec: `,"clusterIP":"None"`},
		{name: "not first", spec: `,"clusterIP":"10.96.0.10","clusterIPs":["10.96.0.11"]`, wantErr: "spec.clusterIP"},
		{name: "not an IP", spec: `,"clusterIPs":["10.96.0.300"]`, wantErr: "spec.clusterIPs[0]"},
		{name: "loopback (tests, benchmarks)", spec: `,"clusterIP":"127.234.0.10"`, want: []string{"127.234.0.10"}},
		{name: "multicast", spec: `,"clusterIP":"224.0.0.1"`, wantErr: "not a unicast"},
		{name: "unspecified", spec: `,"clusterIP":"0.0.0.0"`, wantErr: "not a unicast"},
		{name: "zone", spec: `,"clusterIPs":["fe80::1%eth0"]`, wantErr: "not a unicast"},
		{name: "two v4", spec: `,"clusterIPs":["10.96.0.10","10.96.0.11"]`, wantErr: "two addresses of one family"},
		{name: "three", spec: `,"clusterIPs":["10.96.0.10","fd00::a","fd00::b"]`, wantErr: "at most one IPv4 and one IPv6"},
		{name: "None and an IP", spec: `,"clusterIPs":["None","10.96.0.10"]`, wantErr: "only entry"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			objs, err := Decode([]byte(doc(tt.spec)))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Decode: %v, want an error with %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, a := range objs[0].(*Service).ClusterAddrs() {
				got = append(got, a.String())
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("ClusterAddrs %v, want %v", got, tt.want)
			}
		})
	}
}
