# fogmesh — see README.md.
GO       ?= go
GOFLAGS  ?=
BIN      := bin
# The commit `fogmesh version` prints (-buildvcs may be off, or no .git here).
COMMIT   ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null)$(shell git diff --quiet HEAD 2>/dev/null || echo +dirty)
LDFLAGS  := -s -w -X github.com/fogmesh/fogmesh/internal/cli.Commit=$(COMMIT)

.PHONY: all build image dev test test-deps bench bench-paths bench-control bench-kube fuzz lint clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/fogmesh ./cmd/fogmesh
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/fogmesh-agent ./cmd/fogmesh-agent
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/fogmesh-relay ./cmd/fogmesh-relay

# OCI images of the agent and the control plane for PLATFORMS, without a Docker
# daemon (tools/image, go-containerregistry): one OCI layout per image in
# bin/image/NAME and its tar (oci-archive) bin/image/NAME.tar. Push with
# `crane push bin/image/fogmesh-agent REPO:TAG` or `skopeo copy oci:bin/image/fogmesh-agent:TAG docker://REPO:TAG`.
IMAGE_TAG ?= dev
PLATFORMS ?= linux/amd64,linux/arm64
image:
	cd tools/image && $(GO) run . -src ../.. -out ../../$(BIN)/image -tag $(IMAGE_TAG) -platforms $(PLATFORMS) -tar

# The embedded demo: a control plane and four node agents on this machine.
dev:
	$(GO) run ./cmd/fogmesh dev

# Installs what the tests use (dig, curl, mosquitto, iptables, chromium) if missing, then runs every test
# with the race detector. Fuzz seed corpora run as ordinary tests.
test: test-deps
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 20m ./...
	# httpproxy.RawIO reads and writes otherwise outside race builds: test that too.
	$(GO) test -count=1 -timeout 5m ./internal/httpproxy/
	# ... and the agent's HTTP/1.1 fast path on it (bodies, full duplex, early answers), as shipped.
	$(GO) test -count=1 -timeout 5m -run 'Duplex|Upload|Queued|Replay|Echo|ClientGone|Early|Drain|Panic|TestFast|TestH1' ./internal/agent/
	# Tests of allocations, heap and stacks that the race detector skews (skipped or loosened under it).
	$(GO) test -count=1 -timeout 5m -run 'TestH1FastPathAllocs|TestGRPCUnaryAllocs|TestRelayIdleSessionHeap|TestSessionStreamsAwaitingHeaderBounded|TestStreamCostsOneGoroutine' \
		./internal/agent/ ./internal/relay/ ./internal/transport/ ./internal/control/
	# The agent builds for 32-bit ARM boards too (an int that held a uid overflowed there).
	GOARCH=arm GOARM=7 CGO_ENABLED=0 $(GO) build -o /dev/null ./cmd/fogmesh-agent
	# memtrim.ReleaseCode must skip a PIE's relocated read-only data: run it in one.
	$(GO) test -buildmode=pie -count=1 -timeout 2m -run 'ReleaseCode' ./internal/memtrim/
	# bench/handoffs is its own module (golang.org/x/exp/trace stays out of the agent's): test it too.
	cd bench/handoffs && $(GO) vet ./... && $(GO) test -race -count=1 -timeout 2m ./...

test-deps:
	@scripts/install-deps.sh test

# Side-by-side benchmarks (direct, agent, two agents, HAProxy, splice relay).
bench:
	@scripts/install-deps.sh bench
	bench/bench.sh

# Issue 12's paths between network namespaces with real NAT routers: direct
# (TLS+yamux), punched (QUIC) and relayed (`fogmesh relay`), throughput, p50/p99,
# relay CPU per Gbit/s and RSS with 1,000 held streams/sessions. Needs root. ROUNDS (3).
bench-paths:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/fogmesh ./cmd/fogmesh
	$(GO) run ./bench/netpaths -fogmesh $(BIN)/fogmesh

# Issue 13's control-plane scale: N simulated agents (mTLS) against `fogmesh control`,
# endpoint changes at RATE/s, change->all-agents latency, CPU, RSS, resync after a
# restart. N (1000), M (5×N, at most 50,000), RATE (100), DURATION (30s); CTLLOAD_ARGS
# passes more flags (go run ./bench/ctlload -h).
N        ?= 1000
RATE     ?= 100
DURATION ?= 30s
bench-control:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/fogmesh ./cmd/fogmesh
	$(GO) run ./bench/ctlload -fogmesh $(BIN)/fogmesh -n $(N) $(if $(M),-m $(M)) -rate $(RATE) -duration $(DURATION) -json bench/out/ctlload.jsonl $(CTLLOAD_ARGS)

# Issue 15's Kubernetes registry against a real kube-apiserver: KUBE_SERVICES (1000)
# Services with KUBE_ENDPOINTS (10000) endpoints and their Pods, `fogmesh control -kube`
# (secure) and 3 real agents; EndpointSlice change -> every agent routes by it
# (p50/p99), control-plane RSS, captured ClusterIP against virtual IP. Needs root
# (its own network namespace, nftables). KUBELOAD_ARGS passes more flags
# (go run ./bench/kubeload -h).
KUBE_SERVICES  ?= 1000
KUBE_ENDPOINTS ?= 10000
bench-kube:
	@scripts/install-deps.sh test
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/fogmesh ./cmd/fogmesh
	$(GO) run ./bench/kubeload -fogmesh $(BIN)/fogmesh -services $(KUBE_SERVICES) -endpoints $(KUBE_ENDPOINTS) -json bench/out/kubeload.jsonl $(KUBELOAD_ARGS)

# Runs each fuzz target for a while (FUZZTIME, default 30s).
FUZZTIME ?= 30s
fuzz:
	@for t in $$($(GO) test -list 'Fuzz.*' ./... | grep ^Fuzz); do \
	  pkg=$$(grep -rl "func $$t(" --include=*_test.go internal | head -1 | xargs dirname); \
	  echo "== $$t ($$pkg)"; $(GO) test -run XXX -fuzz "^$$t$$" -fuzztime $(FUZZTIME) ./$$pkg || exit 1; \
	done

clean:
	rm -rf $(BIN)
