package fastpath

import (
	"fmt"
	"math"

	"github.com/cilium/ebpf/btf"
)

// tcpSockOffsets are where the sk_msg program reads the sending socket
// through the kernel's BTF: write_seq in struct tcp_sock, and icsk_ulp_ops
// in the struct inet_connection_sock at its start.
type tcpSockOffsets struct {
	writeSeq, ulpOps int16
}

// loadTCPSockOffsets finds the offsets in the running kernel's BTF
// (/sys/kernel/btf/vmlinux; mapped, decoded lazily and not kept).
func loadTCPSockOffsets() (tcpSockOffsets, error) {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return tcpSockOffsets{}, fmt.Errorf("fastpath: the kernel's BTF (needed to read a socket's write_seq): %w", err)
	}
	var ts *btf.Struct
	if err := spec.TypeByName("tcp_sock", &ts); err != nil {
		return tcpSockOffsets{}, fmt.Errorf("fastpath: struct tcp_sock in the kernel's BTF: %w", err)
	}
	var o tcpSockOffsets
	for _, f := range []struct {
		at   *int16
		path []string
		size uint32
	}{
		{&o.writeSeq, []string{"write_seq"}, 4},
		{&o.ulpOps, []string{"inet_conn", "icsk_ulp_ops"}, 8},
	} {
		off, ok := memberOffset(ts, f.path, f.size)
		if !ok || off > math.MaxInt16 {
			return tcpSockOffsets{}, fmt.Errorf("fastpath: no usable %v in the kernel's struct tcp_sock", f.path)
		}
		*f.at = int16(off)
	}
	return o, nil
}

// memberOffset is the byte offset in t of the member at path (names of
// nested members), which must be size bytes; anonymous structs and unions
// on the way are looked into.
func memberOffset(t btf.Type, path []string, size uint32) (uint32, bool) {
	var members []btf.Member
	switch t := btf.UnderlyingType(t).(type) {
	case *btf.Struct:
		members = t.Members
	case *btf.Union:
		members = t.Members
	default:
		return 0, false
	}
	for _, m := range members {
		if m.BitfieldSize != 0 || m.Offset%8 != 0 {
			continue
		}
		at := m.Offset.Bytes()
		switch m.Name {
		case path[0]:
			if len(path) > 1 {
				off, ok := memberOffset(m.Type, path[1:], size)
				return at + off, ok
			}
			if n, err := btf.Sizeof(m.Type); err != nil || uint32(n) != size {
				return 0, false
			}
			return at, true
		case "":
			if off, ok := memberOffset(m.Type, path, size); ok {
				return at + off, true
			}
		}
	}
	return 0, false
}
