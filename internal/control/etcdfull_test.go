package control

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/fogmesh/fogmesh/internal/store/etcdstore/etcdtest"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// TestEtcdOutOfSpace: etcd's backend quota fills (its disk, as far as
// etcd is concerned: the NOSPACE alarm). Writes through a replica fail
// with 507 and an error saying etcd is out of space and what to do, as
// on a full disk of the embedded store; the replica keeps serving the last
// state (lists, a new agent's snapshot) and nothing is lost; once the
// operator frees space and disarms the alarm, writes work again.
func TestEtcdOutOfSpace(t *testing.T) {
	c := etcdtest.StartWith(t, 1, etcdtest.Options{Args: []string{"--quota-backend-bytes", "2097152"}})
	a := startReplica(t, c, "a", true)
	if code, body := applyDoc(t, a, helloSvc); code != 200 {
		t.Fatal(code, body)
	}
	rev, _ := a.st.Rev()
	cli := c.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	big := strings.Repeat("x", 100<<10)
	full := false
	for i := 0; i < 200 && !full; i++ { // 2 MiB: about 20 puts
		_, err := cli.Put(ctx, "/filler/"+string(rune('a'+i%26))+strings.Repeat("z", i/26), big)
		full = err != nil && strings.Contains(err.Error(), "database space exceeded")
		if err != nil && !full {
			t.Fatal(err)
		}
	}
	if !full {
		t.Fatal("etcd never ran out of space")
	}
	code, body := applyDoc(t, a, strings.Replace(helloSvc, "8080", "8081", 1))
	if code != http.StatusInsufficientStorage || !strings.Contains(body, "etcd is out of space") {
		t.Fatalf("apply with etcd out of space: %d %s; want 507 saying etcd is out of space", code, body)
	}
	if r, _ := a.st.Rev(); r != rev {
		t.Fatalf("revision moved from %d to %d although the write failed", rev, r)
	}
	ag := dialAgent(t, a, "n9")
	ag.send(&wire.Message{Type: wire.TypeSubscribe})
	m := ag.recv()
	if !m.Full || !strings.Contains(strings.Join(names(m), ","), "Service demo/hello") {
		t.Fatalf("new agent with etcd out of space: full=%v %v", m.Full, names(m))
	}

	// The operator's way out: free space, compact, defragment, disarm.
	if _, err := cli.Delete(ctx, "/filler/", clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(ctx, "/")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Defragment(ctx, c.Endpoint(0)); err != nil {
		t.Fatal(err)
	}
	alarms, err := cli.AlarmList(ctx)
	if err != nil || len(alarms.Alarms) == 0 {
		t.Fatalf("alarms: %v %v", alarms, err)
	}
	for _, al := range alarms.Alarms {
		if _, err := cli.AlarmDisarm(ctx, (*clientv3.AlarmMember)(al)); err != nil {
			t.Fatal(err)
		}
	}
	if code, body := applyDoc(t, a, strings.Replace(helloSvc, "8080", "8081", 1)); code != 200 {
		t.Fatalf("apply once etcd has room: %d %s", code, body)
	}
	if r, _ := a.st.Rev(); r != rev+1 {
		t.Fatalf("revision %d after the write, want %d", r, rev+1)
	}
}
