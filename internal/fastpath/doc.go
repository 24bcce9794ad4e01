// Package fastpath is the agent's kernel fast path for same-node TCP: a BPF
// sockmap that, once the agent has chosen a local endpoint for a local
// client's connection and authorized it, sends each side's bytes straight
// out of the agent's socket toward the other side, so established node-tier
// connections stop waking the agent and skip one trip through the loopback
// TCP stack per direction. The agent stays the owner of both connections
// (it sees the ends, enforces the idle timeout and counts the bytes), and
// its userspace relay is the fallback for everything the kernel path does
// not take: IPv6, clients outside the cgroup hierarchy or in other network
// namespaces, connections opened before the fast path was loaded.
//
// Linux only (BPF sock_ops and sk_msg, kernel 5.15 or later with its BTF
// at /sys/kernel/btf/vmlinux, root); Open returns an error elsewhere.
package fastpath
