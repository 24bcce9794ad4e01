// SPDX-License-Identifier: MIT OR GPL-2.0-only
// (the BPF programs: see progLicense)

package fastpath

import "github.com/cilium/ebpf/asm"

// The BPF side, written with cilium/ebpf's assembler so that building the
// agent needs no C compiler. Two programs:
//
//   - sockOps (BPF_CGROUP_SOCK_OPS, on the cgroup v2 root), for sockets of
//     the agent's network namespace. When a TCP connection over IPv4 (or
//     v4-mapped IPv6) becomes established:
//     - a local client's socket (an active open to an agent listener) and
//     a local endpoint's accepted socket (a passive open to a registered
//     endpoint) are tracked: put into the sockhash under their tuple, with
//     their counters (the sequence before their first byte, nothing
//     redirected yet) and their cookie;
//     - the agent's own sockets of such connections (the accepted end of a
//     listener's connection, the agent's end of one to an endpoint) are
//     watched: their acknowledged bytes are kept in the acks map, updated
//     on every RTT sample (BPF_SOCK_OPS_RTT_CB), so the sk_msg program can
//     tell how much is queued in them.
//   - skMsg (BPF_SK_MSG_VERDICT, on the sockhash): runs on sendmsg of a
//     tracked socket. A socket the agent has linked to one of its own (the
//     link map) has its bytes sent straight out of that agent socket (the
//     client's into the agent's connection to the endpoint, the endpoint's
//     into the agent's accepted connection) when the agent has forwarded
//     every byte the socket sent the normal way (its write_seq less its
//     ISN+1 == links.forwarded), and when the agent
//     socket then holds at most maxQueued bytes not yet acknowledged. The
//     bound matters: a redirect into a full socket fails, and the sender,
//     whose own socket is empty, would never hear that there is room
//     again. Otherwise the bytes pass to the agent, which forwards them in
//     order.
//
//     The socket's own sequence, not a count the program keeps, says what
//     went the normal way: when a pass fails part-way (the socket's send
//     buffer full, a non-blocking sender), the kernel keeps the verdict
//     and applies it to the socket's next send without running the
//     program, so a count kept here misses those bytes. Such a count once
//     fell megabytes behind in a 24 MiB upload, and where the agent's
//     forwarded count met it again the program redirected while bytes were
//     still on their way to the agent: the endpoint got the stream out of
//     order. write_seq is read through the kernel's BTF (tcp_sock), its
//     offset found at load time (Open).
//
// Map layouts (all integers native-endian, IPs as the kernel stores them,
// in network order):
//
//	tuple  (16 B): local IPv4, remote IPv4, local port, remote port (host order)
//	portKey (8 B): IPv4, port (host order)       -> u32 kind (kindListener, kindEndpoint)
//	link   (32 B): peer tuple (the agent socket to send from), u64 forwarded,
//	               u64 cookie of the socket linked
//	count  (24 B): u64 the socket's ISN+1 (the sequence of its first byte,
//	               32 bits), u64 redirected, u64 the socket's cookie
//	ack    (16 B): u64 bytes_acked when established, u64 bytes_acked now

// progLicense is the license the programs declare to the kernel. Reading
// a socket's write_seq through BTF is open only to GPL-compatible
// programs, so the BPF programs built here (this file) are offered under
// the MIT license or the GPL, version 2, as the kernel's "Dual MIT/GPL"
// says; the rest of fogmesh is unaffected (the userspace code only loads
// them, as any loader of a GPL BPF program does).
const progLicense = "Dual MIT/GPL"

// Kinds of address in the ports map.
const (
	kindListener = 1 // an agent listener: a client's active open to it is tracked
	kindEndpoint = 2 // a local endpoint: its passive opens are tracked
)

// maxQueued bounds the bytes a redirect may leave unacknowledged in an
// agent socket, the message included; the agent gives its linked sockets
// a send buffer well above it (sndBufForce).
const maxQueued = 1 << 20

// Offsets in the programs' context structures (include/uapi/linux/bpf.h).
const (
	sockOpsOp         = 0
	sockOpsFamily     = 20
	sockOpsRemoteIP4  = 24
	sockOpsLocalIP4   = 28
	sockOpsRemotePort = 64 // network order, in the upper 16 bits on little endian
	sockOpsLocalPort  = 68
	sockOpsSndNxt     = 104
	sockOpsSndUna     = 108
	sockOpsBytesAcked = 176

	msgFamily     = 16
	msgRemoteIP4  = 20
	msgLocalIP4   = 24
	msgRemotePort = 60 // as in bpf_sock_ops
	msgLocalPort  = 64
	msgSize       = 68
	msgSk         = 72 // struct bpf_sock *

	opActiveEstablished  = 4  // BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB
	opPassiveEstablished = 5  // BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB
	opRTT                = 12 // BPF_SOCK_OPS_RTT_CB
	rttCBFlag            = 1 << 3
	afInet               = 2
	afInet6              = 10
	skPass               = 1
)

// loadTuple checks the family of the context in R6 (IPv4, or IPv6 that may
// be v4-mapped: its IPv4 fields then hold the addresses; a plain IPv6
// socket's read as zero and match nothing) and writes its tuple at fp-16,
// using the offsets of its context type. The remote port is stored as the
// kernel hands it (network order shifted to the upper half on
// little-endian hosts), so ntohl gives the port. It jumps to out for
// another family.
func loadTuple(family, localIP, remoteIP, localPort, remotePort int16, out string) asm.Instructions {
	return asm.Instructions{
		asm.LoadMem(asm.R3, asm.R6, family, asm.Word),
		asm.JEq.Imm(asm.R3, afInet, out+"_inet"),
		asm.JNE.Imm(asm.R3, afInet6, out),
		asm.LoadMem(asm.R3, asm.R6, localIP, asm.Word).WithSymbol(out + "_inet"),
		asm.StoreMem(asm.RFP, -16, asm.R3, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, remoteIP, asm.Word),
		asm.StoreMem(asm.RFP, -12, asm.R3, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, localPort, asm.Word),
		asm.StoreMem(asm.RFP, -8, asm.R3, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, remotePort, asm.Word),
		asm.HostTo(asm.BE, asm.R3, asm.Word),
		asm.StoreMem(asm.RFP, -4, asm.R3, asm.Word),
	}
}

// lookup calls map_lookup_elem on the map with fd m for the key at fp+off.
func lookup(m int, off int32) asm.Instructions {
	return asm.Instructions{
		asm.LoadMapPtr(asm.R1, m),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, off),
		asm.FnMapLookupElem.Call(),
	}
}

// update calls map_update_elem (BPF_ANY) on the map with fd m, key at
// fp+key, value at fp+value.
func update(m int, key, value int32) asm.Instructions {
	return asm.Instructions{
		asm.LoadMapPtr(asm.R1, m),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, key),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, value),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnMapUpdateElem.Call(),
	}
}

// progMaps are the fds of the maps the programs use, and where the sk_msg
// program reads the kernel's struct tcp_sock.
type progMaps struct {
	ports, sockhash, links, counts, acks int
	tcpSock                              tcpSockOffsets
}

// sockOpsProgram builds the sock_ops program. Only sockets of the network
// namespace with cookie netns are tracked or watched: the maps' tuples
// carry no namespace, and the cgroup hierarchy spans them all (a pod's
// socket must never be taken for a host socket with the same addresses).
func sockOpsProgram(m progMaps, netns uint64) asm.Instructions {
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R8, asm.R6, sockOpsOp, asm.Word),
		asm.JEq.Imm(asm.R8, opRTT, "rtt"),
		asm.JEq.Imm(asm.R8, opActiveEstablished, "established"),
		asm.JEq.Imm(asm.R8, opPassiveEstablished, "established"),
		asm.Ja.Label("out"),

		// An RTT sample of a watched socket: its acknowledged bytes.
		asm.Mov.Reg(asm.R1, asm.R1).WithSymbol("rtt"),
	}
	insns = append(insns, loadTuple(sockOpsFamily, sockOpsLocalIP4, sockOpsRemoteIP4, sockOpsLocalPort, sockOpsRemotePort, "out")...)
	insns = append(insns, lookup(m.acks, -16)...)
	insns = append(insns,
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.LoadMem(asm.R1, asm.R6, sockOpsBytesAcked, asm.DWord),
		asm.StoreMem(asm.R0, 8, asm.R1, asm.DWord),
		asm.Ja.Label("out"),

		asm.Mov.Reg(asm.R1, asm.R6).WithSymbol("established"),
		asm.FnGetNetnsCookie.Call(),
		asm.LoadImm(asm.R1, int64(netns), asm.DWord),
		asm.JNE.Reg(asm.R0, asm.R1, "out"),
	)
	insns = append(insns, loadTuple(sockOpsFamily, sockOpsLocalIP4, sockOpsRemoteIP4, sockOpsLocalPort, sockOpsRemotePort, "out2")...)
	insns = append(insns,
		// The address to look up in ports (fp-24): the far end of an
		// active open, the near end of a passive one.
		asm.JEq.Imm(asm.R8, opPassiveEstablished, "passive"),
		asm.LoadMem(asm.R3, asm.RFP, -12, asm.Word),
		asm.StoreMem(asm.RFP, -24, asm.R3, asm.Word),
		asm.LoadMem(asm.R3, asm.RFP, -4, asm.Word),
		asm.StoreMem(asm.RFP, -20, asm.R3, asm.Word),
		asm.Ja.Label("lookup"),
		asm.LoadMem(asm.R3, asm.RFP, -16, asm.Word).WithSymbol("passive"),
		asm.StoreMem(asm.RFP, -24, asm.R3, asm.Word),
		asm.LoadMem(asm.R3, asm.RFP, -8, asm.Word),
		asm.StoreMem(asm.RFP, -20, asm.R3, asm.Word),
		asm.Mov.Reg(asm.R1, asm.R1).WithSymbol("lookup"),
	)
	insns = append(insns, lookup(m.ports, -24)...)
	insns = append(insns,
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.LoadMem(asm.R7, asm.R0, 0, asm.Word), // kind
		// Track: a client's active open to a listener, an endpoint's
		// passive open. Watch: the agent's ends of those connections.
		asm.JEq.Imm(asm.R8, opPassiveEstablished, "passivekind"),
		asm.JEq.Imm(asm.R7, kindListener, "track"),
		asm.JEq.Imm(asm.R7, kindEndpoint, "watch"),
		asm.Ja.Label("out"),
		asm.JEq.Imm(asm.R7, kindEndpoint, "track").WithSymbol("passivekind"),
		asm.JEq.Imm(asm.R7, kindListener, "watch"),
		asm.Ja.Label("out"),

		// Watch: RTT samples from now on, and the acknowledged bytes so far.
		asm.Mov.Reg(asm.R1, asm.R6).WithSymbol("watch"),
		asm.Mov.Imm(asm.R2, rttCBFlag),
		asm.FnSockOpsCbFlagsSet.Call(),
		asm.LoadMem(asm.R1, asm.R6, sockOpsBytesAcked, asm.DWord),
		asm.StoreMem(asm.RFP, -48, asm.R1, asm.DWord),
		asm.StoreMem(asm.RFP, -40, asm.R1, asm.DWord),
	)
	insns = append(insns, update(m.acks, -16, -48)...)
	insns = append(insns,
		asm.Ja.Label("out"),

		// Track: the counters first (a send can follow the insertion at
		// once): the socket's sequence before its first byte, nothing
		// redirected, and its cookie: a link names the socket it was made
		// for, not only its tuple, which a new socket may reuse.
		//
		// The sequence before the first byte is ISN+1. A passive open's
		// snd_nxt is that when established. An active open's may be past
		// data its SYN carried (TCP Fast Open) whether or not the peer
		// took it (the agent's listeners do not: the client sends it
		// again), so it is taken from the ACK instead: snd_una less
		// bytes_acked, which counts the SYN, is the ISN.
		asm.Mov.Reg(asm.R1, asm.R6).WithSymbol("track"),
		asm.FnGetSocketCookie.Call(),
		asm.StoreMem(asm.RFP, -32, asm.R0, asm.DWord),
		asm.LoadMem(asm.R1, asm.R6, sockOpsSndNxt, asm.Word),
		asm.JEq.Imm(asm.R8, opPassiveEstablished, "base"),
		asm.LoadMem(asm.R1, asm.R6, sockOpsSndUna, asm.Word),
		asm.LoadMem(asm.R2, asm.R6, sockOpsBytesAcked, asm.DWord),
		asm.Sub.Reg32(asm.R1, asm.R2),
		asm.Add.Imm32(asm.R1, 1),
		asm.StoreMem(asm.RFP, -48, asm.R1, asm.DWord).WithSymbol("base"),
		asm.Mov.Imm(asm.R1, 0),
		asm.StoreMem(asm.RFP, -40, asm.R1, asm.DWord),
	)
	insns = append(insns, update(m.counts, -16, -48)...)
	insns = append(insns,
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.LoadMapPtr(asm.R2, m.sockhash),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, -16),
		asm.Mov.Imm(asm.R4, 0), // BPF_ANY
		asm.FnSockHashUpdate.Call(),

		asm.Mov.Imm(asm.R0, 1).WithSymbol("out"),
		asm.Return(),
		asm.Ja.Label("out").WithSymbol("out2"),
	)
	return insns
}

// skMsgProgram builds the sk_msg program.
func skMsgProgram(m progMaps) asm.Instructions {
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
	}
	insns = append(insns, loadTuple(msgFamily, msgLocalIP4, msgRemoteIP4, msgLocalPort, msgRemotePort, "pass")...)
	insns = append(insns, lookup(m.counts, -16)...)
	insns = append(insns,
		asm.JEq.Imm(asm.R0, 0, "pass"),
		asm.Mov.Reg(asm.R8, asm.R0), // count
		asm.LoadMem(asm.R9, asm.R6, msgSize, asm.Word),
	)
	insns = append(insns, lookup(m.links, -16)...)
	insns = append(insns,
		asm.JEq.Imm(asm.R0, 0, "pass"),
		asm.Mov.Reg(asm.R7, asm.R0), // link

		asm.LoadMem(asm.R1, asm.R8, 16, asm.DWord), // the socket's cookie
		asm.LoadMem(asm.R2, asm.R7, 24, asm.DWord), // the linked socket's
		asm.JNE.Reg(asm.R1, asm.R2, "pass"),

		// A socket with an upper layer (kernel TLS) is never redirected:
		// the program sees its plaintext, the agent forwards its records.
		asm.LoadMem(asm.R1, asm.R6, msgSk, asm.DWord),
		asm.FnSkcToTcpSock.Call(),
		asm.JEq.Imm(asm.R0, 0, "pass"),
		asm.LoadMem(asm.R1, asm.R0, m.tcpSock.ulpOps, asm.DWord),
		asm.JNE.Imm(asm.R1, 0, "pass"),
		// What the socket sent the normal way, modulo 2^32: write_seq
		// less its sequence when established; all of it forwarded?
		asm.LoadMem(asm.R1, asm.R0, m.tcpSock.writeSeq, asm.Word),
		asm.LoadMem(asm.R2, asm.R8, 0, asm.DWord), // the sequence when established
		asm.Sub.Reg32(asm.R1, asm.R2),
		asm.LoadMem(asm.R2, asm.R7, 16, asm.DWord), // forwarded
		asm.Mov.Reg32(asm.R2, asm.R2),
		asm.JNE.Reg(asm.R1, asm.R2, "pass"),

		// Drained. The agent socket's tuple, on the stack for the helpers.
		asm.LoadMem(asm.R1, asm.R7, 0, asm.DWord),
		asm.StoreMem(asm.RFP, -32, asm.R1, asm.DWord),
		asm.LoadMem(asm.R1, asm.R7, 8, asm.DWord),
		asm.StoreMem(asm.RFP, -24, asm.R1, asm.DWord),
	)
	insns = append(insns, lookup(m.acks, -32)...)
	insns = append(insns,
		asm.JEq.Imm(asm.R0, 0, "pass"),
		// Unacknowledged in the agent socket after this message: what went
		// into it (forwarded by the agent, redirected) less what was acked.
		asm.LoadMem(asm.R1, asm.R8, 8, asm.DWord),  // redirected
		asm.LoadMem(asm.R2, asm.R7, 16, asm.DWord), // forwarded
		asm.Add.Reg(asm.R1, asm.R2),
		asm.LoadMem(asm.R2, asm.R0, 8, asm.DWord), // acked now
		asm.LoadMem(asm.R3, asm.R0, 0, asm.DWord), // acked when established
		asm.Sub.Reg(asm.R2, asm.R3),
		asm.Sub.Reg(asm.R1, asm.R2),
		asm.Add.Reg(asm.R1, asm.R9),
		asm.JSGT.Imm(asm.R1, maxQueued, "pass"),

		asm.Mov.Reg(asm.R1, asm.R6),
		asm.LoadMapPtr(asm.R2, m.sockhash),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, -32),
		asm.Mov.Imm(asm.R4, 0), // egress
		asm.FnMsgRedirectHash.Call(),
		asm.JNE.Imm(asm.R0, skPass, "pass"), // the agent socket is gone: pass, in order
		asm.Mov.Reg(asm.R1, asm.R8),
		asm.Add.Imm(asm.R1, 8),
		// redirected += size, at the verdict: a redirect that then fails
		// part-way (the agent's socket full or gone) returns a short
		// write and the sender sends the rest again, so the count can run
		// above what the kernel carried; the queue bound then errs toward
		// passing, and Result's kernel figures are at most that high.
		asm.StoreXAdd(asm.R1, asm.R9, asm.DWord),
		asm.Mov.Imm(asm.R0, skPass),
		asm.Return(),

		asm.Mov.Imm(asm.R0, skPass).WithSymbol("pass"),
		asm.Return(),
	)
	return insns
}
