package kube

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/control"
)

// InCluster as Config.Kubeconfig uses the pod's service account
// (rest.InClusterConfig).
const InCluster = "in-cluster"

// Sink takes the mapped state; *control.Server is one. SyncCluster must
// be safe to call from one goroutine at a time; it is.
type Sink interface {
	SyncCluster(control.ClusterState) ([]string, error)
	SetClusterLink(string)
}

// Config configures a Source. Kubeconfig is required.
type Config struct {
	// Kubeconfig is a kubeconfig file, or InCluster. Its server may be
	// any endpoint speaking the Kubernetes API: a kube-apiserver,
	// KubeEdge's metaServer on an edge node (http://127.0.0.1:10550),
	// OpenYurt's yurthub.
	Kubeconfig string
	// Mapper maps the objects (its zero value works).
	Mapper Mapper
	// Resync is the informers' resync period (default 0: none; a relist
	// follows every broken watch anyway).
	Resync time.Duration
	// Debounce gathers the changes of this long into one sync (default
	// 100ms).
	Debounce time.Duration
	// CRDPoll is how often the source looks for the custom resource
	// kinds it reads, so that Istio installed later is picked up
	// (default 30s).
	CRDPoll time.Duration
	Logger  *slog.Logger
	Metrics *metrics.Set // nil = a private set
}

// CustomKinds are the custom resources read, when the cluster has them.
var CustomKinds = []schema.GroupVersionResource{
	{Group: "networking.istio.io", Version: "v1", Resource: "virtualservices"},
	{Group: "networking.istio.io", Version: "v1", Resource: "destinationrules"},
	{Group: "security.istio.io", Version: "v1", Resource: "authorizationpolicies"},
	{Group: "security.istio.io", Version: "v1", Resource: "peerauthentications"},
	{Group: "fogmesh.io", Version: "v1alpha1", Resource: "routes"},
	{Group: "fogmesh.io", Version: "v1alpha1", Resource: "destinationpolicies"},
	{Group: "fogmesh.io", Version: "v1alpha1", Resource: "sessions"},
	{Group: "fogmesh.io", Version: "v1alpha1", Resource: "authorizationpolicies"},
}

// Source watches a cluster and syncs what it maps to a Sink. While the
// link is down the informers keep their last lists, so the sink keeps
// serving them; when it returns, client-go relists and the source syncs
// the difference.
type Source struct {
	cfg   Config
	log   *slog.Logger
	sink  Sink
	core  kubernetes.Interface
	dyn   dynamic.Interface
	fac   informers.SharedInformerFactory
	dfac  dynamicinformer.DynamicSharedInformerFactory
	kick  chan struct{}
	mSync *metrics.Counter

	svc   cache.SharedIndexInformer
	slice cache.SharedIndexInformer
	node  cache.SharedIndexInformer
	pod   cache.SharedIndexInformer

	mu      sync.Mutex // guards the following
	custom  map[schema.GroupVersionResource]cache.SharedIndexInformer
	good    map[string]goodObject      // last good mapping of each custom object
	goodSvc map[string]*corev1.Service // last good version of each Service
	linkErr string
	linkAt  time.Time

	warned map[string]bool // the last sync's warnings (syncOnce's)
}

// goodObject is the last good mapping of a cluster object, kept while a
// later version of it cannot be mapped.
type goodObject struct {
	rv   string
	objs []api.Object
}

// RESTConfig loads a client configuration from a kubeconfig file or the
// pod's service account.
func RESTConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == InCluster {
		c, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("kube: in-cluster config: %w", err)
		}
		return c, nil
	}
	c, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kube: kubeconfig %s: %w", kubeconfig, err)
	}
	return c, nil
}

// New builds a source; Run starts it.
func New(cfg Config, sink Sink) (*Source, error) {
	if cfg.Kubeconfig == "" {
		return nil, errors.New("kube: no kubeconfig (a file, or in-cluster)")
	}
	if cfg.Debounce <= 0 {
		cfg.Debounce = 100 * time.Millisecond
	}
	if cfg.CRDPoll <= 0 {
		cfg.CRDPoll = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.NewSet()
	}
	rc, err := RESTConfig(cfg.Kubeconfig)
	if err != nil {
		return nil, err
	}
	rc.UserAgent = "fogmesh-control"
	// JSON, so that watchMeter can read the watch streams.
	rc.ContentType, rc.AcceptContentTypes = "application/json", "application/json"
	var s *Source
	rc.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return &watchMeter{next: rt, report: func(res, reason string, err error) { s.watchFailed(res, reason, err) }}
	})
	core, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kube: client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kube: dynamic client: %w", err)
	}
	s = &Source{cfg: cfg, log: cfg.Logger, sink: sink, core: core, dyn: dyn,
		fac:     informers.NewSharedInformerFactory(core, cfg.Resync),
		dfac:    dynamicinformer.NewDynamicSharedInformerFactory(dyn, cfg.Resync),
		kick:    make(chan struct{}, 1),
		custom:  map[schema.GroupVersionResource]cache.SharedIndexInformer{},
		good:    map[string]goodObject{},
		goodSvc: map[string]*corev1.Service{},
		mSync:   cfg.Metrics.GetOrCreateCounter(`fogmesh_kube_syncs_total`),
	}
	s.svc = s.fac.Core().V1().Services().Informer()
	s.slice = s.fac.Discovery().V1().EndpointSlices().Informer()
	s.node = s.fac.Core().V1().Nodes().Informer()
	s.pod = s.fac.Core().V1().Pods().Informer()
	for name, inf := range map[string]cache.SharedIndexInformer{"services": s.svc, "endpointslices": s.slice, "nodes": s.node, "pods": s.pod} {
		s.watch(name, inf)
	}
	// client-go logs through klog: into our logger.
	klog.SetSlogLogger(cfg.Logger.With("component", "client-go"))
	return s, nil
}

// watch hooks an informer's events and watch errors.
func (s *Source) watch(name string, inf cache.SharedIndexInformer) {
	kick := func() {
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
	inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { kick() },
		UpdateFunc: func(_, _ any) { kick() },
		DeleteFunc: func(any) { kick() },
	})
	inf.SetWatchErrorHandler(func(_ *cache.Reflector, err error) {
		reason := "error"
		switch {
		case apierrors.IsResourceExpired(err) || apierrors.IsGone(err):
			reason = "gone" // 410: the reflector relists
		case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
			reason = "closed"
		}
		s.watchFailed(name, reason, err)
	})
}

// watchFailed counts, logs and shows a failed list or watch: the
// informers keep the last state seen, and relist.
func (s *Source) watchFailed(resource, reason string, err error) {
	s.cfg.Metrics.GetOrCreateCounter(fmt.Sprintf(`fogmesh_kube_watch_errors_total{resource=%q,reason=%q}`, resource, reason)).Inc()
	s.log.Warn("kube: watch failed; serving the last state seen and relisting", "resource", resource, "reason", reason, "err", err)
	s.mu.Lock()
	s.linkErr, s.linkAt = fmt.Sprintf("%s watch: %s: %v", resource, reason, err), time.Now()
	s.mu.Unlock()
	s.sink.SetClusterLink(s.link())
}

// link describes the link for the sink's status.
func (s *Source) link() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.linkErr == "" {
		return ""
	}
	return fmt.Sprintf("%s (at %s)", s.linkErr, s.linkAt.UTC().Format(time.RFC3339))
}

// Run watches until ctx ends. It returns after the informers stopped.
func (s *Source) Run(ctx context.Context) error {
	s.fac.Start(ctx.Done())
	s.findCustom(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer s.fac.Shutdown()
	defer s.dfac.Shutdown()
	wg.Add(1)
	go func() { // pollCustomKinds
		defer wg.Done()
		t := time.NewTicker(s.cfg.CRDPoll)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				s.findCustom(ctx)
			}
		}
	}()
	// Nothing is synced before every informer has its first list: a
	// half-read cluster would delete what the rest still has.
	if !cache.WaitForCacheSync(ctx.Done(), s.svc.HasSynced, s.slice.HasSynced, s.node.HasSynced, s.pod.HasSynced) {
		return nil
	}
	s.log.Info("kube: cluster listed", "kubeconfig", s.cfg.Kubeconfig)
	for {
		if !s.customSynced() {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(s.cfg.Debounce):
				continue
			}
		}
		if err := s.syncOnce(); err != nil {
			s.log.Error("kube: sync failed; trying again", "err", err)
			s.cfg.Metrics.GetOrCreateCounter(`fogmesh_kube_sync_errors_total`).Inc()
			select {
			case s.kick <- struct{}{}:
			default:
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.kick:
		}
		// Gather a burst of changes into one sync.
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(s.cfg.Debounce):
		}
	}
}

// findCustom starts an informer for every custom kind the cluster
// serves and has none yet.
func (s *Source) findCustom(ctx context.Context) {
	started := false
	for _, gvr := range CustomKinds {
		s.mu.Lock()
		_, have := s.custom[gvr]
		s.mu.Unlock()
		if have {
			continue
		}
		rl, err := s.core.Discovery().ServerResourcesForGroupVersion(gvr.GroupVersion().String())
		if err != nil {
			continue // not installed (404), or the link is down: next poll
		}
		served := false
		for _, r := range rl.APIResources {
			served = served || r.Name == gvr.Resource
		}
		if !served {
			continue
		}
		inf := s.dfac.ForResource(gvr).Informer()
		s.watch(gvr.Resource+"."+gvr.Group, inf)
		s.mu.Lock()
		s.custom[gvr] = inf
		s.mu.Unlock()
		s.log.Info("kube: reading custom resources", "resource", gvr.String())
		started = true
	}
	if started {
		s.dfac.Start(ctx.Done())
	}
}

func (s *Source) customSynced() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, inf := range s.custom {
		if !inf.HasSynced() {
			return false
		}
	}
	return true
}

// syncOnce maps the informers' caches and hands the result to the sink.
func (s *Source) syncOnce() error {
	st, warns := s.mapAll()
	// Each sync maps the whole cluster again: a warning is logged when
	// it appears, not at every sync (the status lists it meanwhile).
	now := make(map[string]bool, len(warns))
	for _, w := range warns {
		if !s.warned[w] && !now[w] {
			s.log.Warn("kube: bad input", "warning", w)
		}
		now[w] = true
	}
	s.warned = now
	st.Warnings = warns
	st.Link = s.link()
	conflicts, err := s.sink.SyncCluster(st)
	if err != nil {
		return err
	}
	s.mSync.Inc()
	s.cfg.Metrics.GetOrCreateGauge(`fogmesh_kube_warnings`, nil).Set(float64(len(warns)))
	s.cfg.Metrics.GetOrCreateGauge(`fogmesh_kube_conflicts`, nil).Set(float64(len(conflicts)))
	return nil
}

// keep remembers a good mapping of an object, or, when mapping failed,
// returns the last good one (and a warning saying so).
func (s *Source) keep(key, rv string, objs []api.Object, err error) ([]api.Object, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		s.good[key] = goodObject{rv: rv, objs: objs}
		return objs, ""
	}
	s.cfg.Metrics.GetOrCreateCounter(`fogmesh_kube_bad_objects_total`).Inc()
	if g, ok := s.good[key]; ok {
		return g.objs, fmt.Sprintf("%v; its last good version (resourceVersion %s) is served", err, g.rv)
	}
	return nil, fmt.Sprintf("%v; skipped", err)
}

// lastGoodService counts a Service that cannot be mapped and returns its
// last good version (nil if none), with a warning.
func (s *Source) lastGoodService(key string, err error) (*corev1.Service, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cfg.Metrics.GetOrCreateCounter(`fogmesh_kube_bad_objects_total`).Inc()
	if g := s.goodSvc[key]; g != nil {
		return g, fmt.Sprintf("%v; its last good version (resourceVersion %s) is served", err, g.ResourceVersion)
	}
	return nil, fmt.Sprintf("%v; skipped", err)
}

// mapAll maps the whole cluster.
func (s *Source) mapAll() (control.ClusterState, []string) {
	st := control.ClusterState{Source: api.SourceKubernetes, Nodes: map[string]control.NodeTopology{}}
	var warns []string
	c := Cluster{Nodes: map[string]bool{}, Pods: map[string]*corev1.Pod{}}
	for _, o := range s.node.GetStore().List() {
		n, ok := o.(*corev1.Node)
		if !ok {
			continue
		}
		c.Nodes[n.Name] = true
		t, w := s.cfg.Mapper.Topology(n)
		warns = append(warns, w...)
		st.Nodes[n.Name] = t
	}
	for _, o := range s.pod.GetStore().List() {
		if p, ok := o.(*corev1.Pod); ok {
			c.Pods[p.Namespace+"/"+p.Name] = p
		}
	}
	c.PodsByIP = PodsByIP(c.Pods)
	podsOf, w := PodIdentities(c.Pods, c.Nodes)
	warns = append(warns, w...)
	for node, pods := range podsOf {
		t := st.Nodes[node]
		t.Pods = pods
		st.Nodes[node] = t
	}
	slicesOf := map[string][]*discoveryv1.EndpointSlice{}
	for _, o := range s.slice.GetStore().List() {
		sl, ok := o.(*discoveryv1.EndpointSlice)
		if !ok {
			continue
		}
		svc := sl.Labels[discoveryv1.LabelServiceName]
		if svc == "" {
			continue // not a Service's slice
		}
		slicesOf[sl.Namespace+"/"+svc] = append(slicesOf[sl.Namespace+"/"+svc], sl)
	}
	seen := map[string]bool{}
	for _, o := range s.svc.GetStore().List() {
		k, ok := o.(*corev1.Service)
		if !ok {
			continue
		}
		key := "Service/" + k.Namespace + "/" + k.Name
		seen[key] = true
		svc, w, err := s.cfg.Mapper.Service(k)
		warns = append(warns, w...)
		if err != nil {
			// The last good version of the Service serves, with the
			// endpoints its slices have now.
			lk, w2 := s.lastGoodService(key, err)
			warns = append(warns, w2)
			if lk == nil {
				delete(slicesOf, k.Namespace+"/"+k.Name)
				continue
			}
			k = lk
			svc, _, _ = s.cfg.Mapper.Service(k)
		} else {
			s.mu.Lock()
			s.goodSvc[key] = k
			s.mu.Unlock()
		}
		eps, w := Endpoints(k, svc, slicesOf[k.Namespace+"/"+k.Name], c)
		warns = append(warns, w...)
		st.Objects = append(st.Objects, svc)
		for _, e := range eps {
			st.Objects = append(st.Objects, e)
		}
		delete(slicesOf, k.Namespace+"/"+k.Name)
	}
	for key := range slicesOf {
		warns = append(warns, fmt.Sprintf("endpointslices of %s: the cluster has no such Service; skipped", key))
	}
	s.mu.Lock()
	custom := make(map[schema.GroupVersionResource]cache.SharedIndexInformer, len(s.custom))
	for g, inf := range s.custom {
		custom[g] = inf
	}
	s.mu.Unlock()
	gvrs := make([]schema.GroupVersionResource, 0, len(custom))
	for g := range custom {
		gvrs = append(gvrs, g)
	}
	sort.Slice(gvrs, func(i, j int) bool { return gvrs[i].String() < gvrs[j].String() })
	// Two resources may translate to one key (an Istio and a fogmesh kind
	// of one name, or VirtualService a with host x and a-x): the first by
	// kind, namespace and name is used, the same at every sync (the
	// stores' order is a map's).
	from := map[string]string{}
	for _, g := range gvrs {
		var items []*unstructured.Unstructured
		for _, o := range custom[g].GetStore().List() {
			if u, ok := o.(*unstructured.Unstructured); ok {
				items = append(items, u)
			}
		}
		sort.Slice(items, func(i, j int) bool {
			a, b := items[i], items[j]
			return a.GetNamespace() < b.GetNamespace() || a.GetNamespace() == b.GetNamespace() && a.GetName() < b.GetName()
		})
		for _, u := range items {
			key := g.Resource + "." + g.Group + "/" + u.GetNamespace() + "/" + u.GetName()
			seen[key] = true
			where := fmt.Sprintf("%s %s/%s", u.GetKind(), u.GetNamespace(), u.GetName())
			b, err := u.MarshalJSON()
			var objs []api.Object
			var w []string
			if err == nil {
				objs, w, err = s.cfg.Mapper.Custom(b)
			}
			if err != nil {
				err = fmt.Errorf("%s: %w", where, err)
			}
			for _, x := range w {
				warns = append(warns, where+": "+x)
			}
			objs, w2 := s.keep(key, u.GetResourceVersion(), objs, err)
			if w2 != "" {
				warns = append(warns, w2)
			}
			for _, o := range objs {
				ok := api.ObjectKey(o)
				if first, dup := from[ok]; dup {
					warns = append(warns, fmt.Sprintf("%s: translated %s %s is also %s's; that one is used", where, o.GetKind(), o.GetMeta().Key(), first))
					continue
				}
				from[ok] = where
				st.Objects = append(st.Objects, o)
			}
		}
	}
	// Forget the last good mapping of objects the cluster deleted.
	s.mu.Lock()
	for k := range s.good {
		if !seen[k] {
			delete(s.good, k)
		}
	}
	for k := range s.goodSvc {
		if !seen[k] {
			delete(s.goodSvc, k)
		}
	}
	s.mu.Unlock()
	return st, warns
}
