package agent

import (
	"testing"

	"github.com/fogmesh/fogmesh/internal/api"
)

// TestH1PoolCacheWithView: poolFor's pool kept with the endpoint view is
// the one of the destination and port asked: another port's is its own
// (not the kept one), a forgotten pool is not handed out again, and the
// next one asked is kept then.
func TestH1PoolCacheWithView(t *testing.T) {
	s := &l7{a: &Agent{}}
	s.h1 = newH1Path(s)
	defer s.h1.closeAll()
	svc := &api.Service{Meta: api.Meta{Name: "pc", Namespace: "shop"}, Spec: api.ServiceSpec{
		Ports: []api.ServicePort{{Name: "web", Port: 80, Protocol: "http"}, {Name: "admin", Port: 81, Protocol: "http"}}}}
	ep := &api.Endpoint{Meta: api.Meta{Name: "pc-1", Namespace: "shop"}, Spec: api.EndpointSpec{Service: "pc", Address: "127.90.0.1",
		Ports: []api.EndpointPort{{Name: "web", Port: 8080}, {Name: "admin", Port: 8081}}}}
	ev := &endpointView{key: ep.Meta.Key(), ep: ep, healthy: true}
	sv := &serviceView{svc: svc, limitKey: "shop/pc", endpoints: []*endpointView{ev}}
	other := &serviceView{svc: svc, limitKey: "shop/pc", endpoints: []*endpointView{ev}} // another destination view of the same endpoint

	web := s.h1.poolFor(sv, ev, "web")
	if e := ev.h1pool.Load(); e == nil || e.p != web {
		t.Fatal("the first pool asked is not kept with the view")
	}
	if s.h1.poolFor(sv, ev, "web") != web {
		t.Fatal("a second ask got another pool")
	}
	admin := s.h1.poolFor(sv, ev, "admin")
	if admin == web || s.h1.poolFor(sv, ev, "admin") != admin {
		t.Fatalf("port admin: the web pool, or a new one each time")
	}
	if p := s.h1.poolFor(other, ev, "admin"); p == web {
		t.Fatal("another destination's ask got the kept web pool")
	}
	if ev.h1pool.Load().p != web {
		t.Fatal("the kept pool changed with other asks")
	}
	web.Close(false)
	s.h1.forget(sv, ev, "web", web)
	if e := ev.h1pool.Load(); e != nil {
		t.Fatal("a forgotten pool is still kept")
	}
	fresh := s.h1.poolFor(sv, ev, "web")
	if fresh == web {
		t.Fatal("the forgotten pool handed out again")
	}
	if e := ev.h1pool.Load(); e == nil || e.p != fresh {
		t.Fatal("the fresh pool is not kept")
	}
}
