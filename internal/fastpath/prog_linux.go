package fastpath

import "github.com/cilium/ebpf/asm"

// The BPF side, written with cilium/ebpf's assembler so that building the
// agent needs no C compiler. Two programs:
//
//   - sockOps (BPF_CGROUP_SOCK_OPS, on the cgroup v2 root): when a TCP/IPv4
//     connection becomes established and its far end is an agent listener
//     (an active open: a local client's socket) or its near end is a local
//     endpoint (a passive open: the endpoint's accepted socket), it puts the
//     socket into the sockhash under its tuple and zeroes its counters.
//   - skMsg (BPF_SK_MSG_VERDICT, on the sockhash): runs on every sendmsg of
//     a socket in the sockhash. A socket the agent has linked to one of its
//     own sockets (the link map) has its bytes sent straight out of that
//     socket — the client's into the agent's connection to the endpoint, the
//     endpoint's into the agent's accepted connection — once the agent has
//     forwarded every byte the socket sent before (counts.passed ==
//     links.forwarded). Until then, and for every unlinked socket, it passes
//     the bytes on (and counts them, for sockets sock_ops tracks).
//
// Map layouts (all integers native-endian, IPs as the kernel stores them,
// in network order):
//
//	tuple  (16 B): local IPv4, remote IPv4, local port, remote port (host order)
//	portKey (8 B): IPv4, port (host order)       -> u32 kind (kindListener, kindEndpoint)
//	link   (32 B): peer tuple (the agent socket to send from), u64 forwarded,
//	               u64 cookie of the socket linked
//	count  (24 B): u64 passed (bytes the socket sent the normal way), u64
//	               redirected, u64 the socket's cookie

// Kinds of address in the ports map.
const (
	kindListener = 1 // an agent listener: a client's active open to it is tracked
	kindEndpoint = 2 // a local endpoint: its passive opens are tracked
)

// Offsets in the programs' context structures (include/uapi/linux/bpf.h).
const (
	sockOpsOp         = 0
	sockOpsFamily     = 20
	sockOpsRemoteIP4  = 24
	sockOpsLocalIP4   = 28
	sockOpsRemotePort = 64 // network order, in the upper 16 bits on little endian
	sockOpsLocalPort  = 68

	msgFamily     = 16
	msgRemoteIP4  = 20
	msgLocalIP4   = 24
	msgRemotePort = 60 // as in bpf_sock_ops
	msgLocalPort  = 64
	msgSize       = 68

	opActiveEstablished  = 4 // BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB
	opPassiveEstablished = 5 // BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB
	afInet               = 2
	skPass               = 1
)

// loadTuple writes the socket's tuple at fp-16 from the context in R6,
// using the offsets of its context type. The remote port is stored as the
// kernel hands it (network order shifted to the upper half on little-endian
// hosts), so ntohl gives the port.
func loadTuple(localIP, remoteIP, localPort, remotePort int16) asm.Instructions {
	return asm.Instructions{
		asm.LoadMem(asm.R3, asm.R6, localIP, asm.Word),
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

// sockOpsProgram builds the sock_ops program over the maps with the given
// fds. Only sockets of the network namespace with cookie netns are tracked:
// the maps' tuples carry no namespace, and the cgroup hierarchy spans them
// all (a pod's socket must never be taken for a host socket with the same
// addresses).
func sockOpsProgram(ports, sockhash, counts int, netns uint64) asm.Instructions {
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.FnGetNetnsCookie.Call(), // R1: the context
		asm.LoadImm(asm.R1, int64(netns), asm.DWord),
		asm.JNE.Reg(asm.R0, asm.R1, "out"),
		asm.LoadMem(asm.R2, asm.R6, sockOpsOp, asm.Word),
		asm.JEq.Imm(asm.R2, opActiveEstablished, "established"),
		asm.JEq.Imm(asm.R2, opPassiveEstablished, "established"),
		asm.Ja.Label("out"),
		asm.LoadMem(asm.R3, asm.R6, sockOpsFamily, asm.Word).WithSymbol("established"),
		asm.JNE.Imm(asm.R3, afInet, "out"),
	}
	insns = append(insns, loadTuple(sockOpsLocalIP4, sockOpsRemoteIP4, sockOpsLocalPort, sockOpsRemotePort)...)
	insns = append(insns,
		// The address to look up in ports (fp-24): the far end of an
		// active open, the near end of a passive one; R7 the kind wanted.
		asm.JEq.Imm(asm.R2, opPassiveEstablished, "passive"),
		asm.LoadMem(asm.R3, asm.RFP, -12, asm.Word),
		asm.StoreMem(asm.RFP, -24, asm.R3, asm.Word),
		asm.LoadMem(asm.R3, asm.RFP, -4, asm.Word),
		asm.StoreMem(asm.RFP, -20, asm.R3, asm.Word),
		asm.Mov.Imm(asm.R7, kindListener),
		asm.Ja.Label("lookup"),
		asm.LoadMem(asm.R3, asm.RFP, -16, asm.Word).WithSymbol("passive"),
		asm.StoreMem(asm.RFP, -24, asm.R3, asm.Word),
		asm.LoadMem(asm.R3, asm.RFP, -8, asm.Word),
		asm.StoreMem(asm.RFP, -20, asm.R3, asm.Word),
		asm.Mov.Imm(asm.R7, kindEndpoint),

		asm.LoadMapPtr(asm.R1, ports).WithSymbol("lookup"),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -24),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.Word),
		asm.JNE.Reg(asm.R1, asm.R7, "out"),

		// Zero the counters first (a send can follow the insertion at
		// once), with the socket's cookie: a link names the socket it was
		// made for, not only its tuple, which a new socket may reuse.
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.FnGetSocketCookie.Call(),
		asm.StoreMem(asm.RFP, -32, asm.R0, asm.DWord),
		asm.Mov.Imm(asm.R1, 0),
		asm.StoreMem(asm.RFP, -48, asm.R1, asm.DWord),
		asm.StoreMem(asm.RFP, -40, asm.R1, asm.DWord),
		asm.LoadMapPtr(asm.R1, counts),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -16),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, -48),
		asm.Mov.Imm(asm.R4, 0), // BPF_ANY
		asm.FnMapUpdateElem.Call(),

		asm.Mov.Reg(asm.R1, asm.R6),
		asm.LoadMapPtr(asm.R2, sockhash),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, -16),
		asm.Mov.Imm(asm.R4, 0), // BPF_ANY
		asm.FnSockHashUpdate.Call(),

		asm.Mov.Imm(asm.R0, 1).WithSymbol("out"),
		asm.Return(),
	)
	return insns
}

// skMsgProgram builds the sk_msg program over the maps with the given fds.
func skMsgProgram(links, counts, sockhash int) asm.Instructions {
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, msgFamily, asm.Word),
		asm.JNE.Imm(asm.R2, afInet, "pass"),
	}
	insns = append(insns, loadTuple(msgLocalIP4, msgRemoteIP4, msgLocalPort, msgRemotePort)...)
	insns = append(insns,
		// Every send of a tracked socket is counted, linked or not yet:
		// the agent forwards the bytes sent before the link too.
		asm.LoadMapPtr(asm.R1, counts),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -16),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "pass"),
		asm.Mov.Reg(asm.R8, asm.R0), // count
		asm.LoadMem(asm.R9, asm.R6, msgSize, asm.Word),

		asm.LoadMapPtr(asm.R1, links),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -16),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "count"),
		asm.Mov.Reg(asm.R7, asm.R0), // link

		asm.LoadMem(asm.R1, asm.R8, 16, asm.DWord), // the socket's cookie
		asm.LoadMem(asm.R2, asm.R7, 24, asm.DWord), // the linked socket's
		asm.JNE.Reg(asm.R1, asm.R2, "count"),
		asm.LoadMem(asm.R1, asm.R8, 0, asm.DWord),  // passed
		asm.LoadMem(asm.R2, asm.R7, 16, asm.DWord), // forwarded
		asm.JNE.Reg(asm.R1, asm.R2, "count"),

		// Drained: send from the linked agent socket. The peer tuple is
		// copied to the stack for the helper.
		asm.LoadMem(asm.R1, asm.R7, 0, asm.DWord),
		asm.StoreMem(asm.RFP, -32, asm.R1, asm.DWord),
		asm.LoadMem(asm.R1, asm.R7, 8, asm.DWord),
		asm.StoreMem(asm.RFP, -24, asm.R1, asm.DWord),
		asm.Mov.Reg(asm.R1, asm.R8),
		asm.Add.Imm(asm.R1, 8),
		asm.StoreXAdd(asm.R1, asm.R9, asm.DWord), // redirected += size
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.LoadMapPtr(asm.R2, sockhash),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, -32),
		asm.Mov.Imm(asm.R4, 0), // egress
		asm.FnMsgRedirectHash.Call(),
		asm.Return(),

		asm.StoreXAdd(asm.R8, asm.R9, asm.DWord).WithSymbol("count"), // passed += size
		asm.Mov.Imm(asm.R0, skPass).WithSymbol("pass"),
		asm.Return(),
	)
	return insns
}
