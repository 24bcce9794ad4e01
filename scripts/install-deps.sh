#!/usr/bin/env bash
# Installs the Debian packages the tests (or the benchmarks) use, if missing.
# Usage: scripts/install-deps.sh test|bench
set -euo pipefail
want=()
need() { command -v "$1" >/dev/null 2>&1 || want+=("$2"); }
case "${1:-test}" in
  test)
    need dig dnsutils
    need curl curl
    need ip iproute2
    need iptables iptables
    need mosquitto mosquitto
    need mosquitto_pub mosquitto-clients
    need etcd etcd-server
    need h2load nghttp2-client
    need chromium chromium
    need openssl openssl
    ;;
  bench)
    need dig dnsutils
    need curl curl
    need iperf3 iperf3
    need haproxy haproxy
    need wrk wrk
    need h2load nghttp2-client
    ;;
  *) echo "usage: $0 test|bench" >&2; exit 2 ;;
esac
# The kube-apiserver of the Kubernetes source's tests (internal/testenv/kubeapi):
# built once from the Go module proxy into the user's cache directory.
build_kube_apiserver() {
  local ver=v1.37.2 dir bin
  dir="${FOGMESH_KUBE_APISERVER_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/fogmesh/kube-apiserver-$ver}"
  bin="${FOGMESH_KUBE_APISERVER:-$dir/kube-apiserver}"
  [ -x "$bin" ] && return 0
  echo "install-deps: building kube-apiserver $ver into $bin (once; several minutes)" >&2
  mkdir -p "$(dirname "$bin")"
  (cd "$(dirname "$0")/../tools/kube-apiserver" &&
    go build -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$ver -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37" \
      -o "$bin.tmp" k8s.io/kubernetes/cmd/kube-apiserver) && mv "$bin.tmp" "$bin"
}
# kubectl (the deploy tests' kustomize and server dry run): from the same
# module when the machine has none, linked into /usr/local/bin.
build_kubectl() {
  command -v kubectl >/dev/null 2>&1 && return 0
  local ver=v1.37.2 dir
  dir="${XDG_CACHE_HOME:-$HOME/.cache}/fogmesh/kube-apiserver-$ver"
  if [ ! -x "$dir/kubectl" ]; then
    echo "install-deps: building kubectl $ver into $dir (once)" >&2
    mkdir -p "$dir"
    (cd "$(dirname "$0")/../tools/kube-apiserver" &&
      go build -mod=mod -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$ver" \
        -o "$dir/kubectl.tmp" k8s.io/kubernetes/cmd/kubectl) && mv "$dir/kubectl.tmp" "$dir/kubectl" || return 1
  fi
  ln -sf "$dir/kubectl" /usr/local/bin/kubectl
}
if [ "${1:-test}" = test ]; then
  build_kubectl || echo "install-deps: no kubectl and building it failed; the deploy tests will fail" >&2
  # A failed build does not stop the other tests: the Kubernetes tests then
  # fail with the reason (they never skip for want of an apiserver).
  build_kube_apiserver || echo "install-deps: building kube-apiserver failed; the Kubernetes tests will fail" >&2
fi
[ ${#want[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-deps: missing ${want[*]}; not root or no apt-get, so tests that need them will skip" >&2
  exit 0
fi
echo "install-deps: installing ${want[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null 2>&1 || apt-get update
apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
