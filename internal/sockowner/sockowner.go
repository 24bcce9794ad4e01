// Package sockowner finds the local processes behind the client end of a
// TCP connection accepted on this host, so the agent can attest a local
// client by who runs it rather than by the source address it bound (any
// local process can bind 127.0.0.50).
//
// On Linux, Lookup asks the kernel for the client socket by its exact
// 4-tuple over netlink sock_diag (NETLINK_SOCK_DIAG, as `ss` does; no
// privilege needed), which gives the socket's owner uid and inode, and then
// finds the processes holding that inode in /proc/*/fd (reading another
// user's fd table needs root or CAP_SYS_PTRACE). Elsewhere Lookup returns
// ErrUnsupported.
//
// The netlink request is built and its reply decoded here by hand (about a
// hundred lines over golang.org/x/sys/unix) rather than with a netlink
// library: the agent needs one request type, and the decoder, which reads
// kernel output, has a fuzz target.
package sockowner

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"
)

// Process is one process holding the socket, read from /proc when Lookup
// ran.
type Process struct {
	PID int32
	// UID and GID are the process's effective ids, as SO_PEERCRED reports
	// them for Unix sockets.
	UID, GID int32
	// Exe is /proc/<pid>/exe ("" if unreadable).
	Exe string
}

// Owner is what the kernel says about a client socket.
type Owner struct {
	// UID owns the socket: the effective uid of the process that created
	// it.
	UID   uint32
	Inode uint32
	// Procs hold the socket open (usually one; more after fork or fd
	// passing). Empty when no process Lookup may inspect holds it.
	Procs []Process
}

var (
	// ErrNotFound: the kernel knows no socket with that 4-tuple in this
	// network namespace (closed already, or not a local client).
	ErrNotFound = errors.New("sockowner: no such socket")
	// ErrUnsupported: this platform has no way to look sockets up.
	ErrUnsupported = errors.New("sockowner: socket owners are known on Linux only")
)

// Wire layout (include/uapi/linux/netlink.h, inet_diag.h). Integers are in
// host byte order except ports (big endian) and addresses (network order,
// an IPv4 address in the first 4 of 16 bytes).
//
//	nlmsghdr          len u32 | type u16 | flags u16 | seq u32 | pid u32      16 bytes
//	inet_diag_req_v2  family u8 | protocol u8 | ext u8 | pad u8 | states u32 | sockid
//	inet_diag_sockid  sport be16 | dport be16 | src [16]u8 | dst [16]u8 | if u32 | cookie [2]u32   48 bytes
//	inet_diag_msg     family u8 | state u8 | timer u8 | retrans u8 | sockid |
//	                  expires u32 | rqueue u32 | wqueue u32 | uid u32 | inode u32                  72 bytes
//	nlmsgerr          error s32 (negative errno, 0 = ack) | the request's nlmsghdr
const (
	nlmsgHdrLen     = 16
	sockIDLen       = 48
	diagReqLen      = 8 + sockIDLen
	diagMsgLen      = 72
	nlmsgError      = 2  // NLMSG_ERROR
	nlmsgDone       = 3  // NLMSG_DONE
	sockDiagByFam   = 20 // SOCK_DIAG_BY_FAMILY
	nlmFRequest     = 1  // NLM_F_REQUEST
	afInet          = 2  // AF_INET
	afInet6         = 10 // AF_INET6
	ipprotoTCP      = 6
	sockIDOffInMsg  = 4
	uidOffInMsg     = 64
	inodeOffInMsg   = 68
	diagNoCookie    = ^uint32(0) // INET_DIAG_NOCOOKIE
	allTCPStates    = ^uint32(0)
	maxReplyMessage = 1 << 16
)

// sockID names a connection by the looked-up socket's local (src) and
// remote (dst) ends, and how to write it in a request: as IPv4 (afInet) or
// as IPv6, an IPv4 address v4-mapped as a dual-stack socket holds it.
type sockID struct {
	family   uint8
	src, dst netip.AddrPort // unmapped
}

func newSockID(family uint8, src, dst netip.AddrPort) sockID {
	unmap := func(ap netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()) }
	return sockID{family: family, src: unmap(src), dst: unmap(dst)}
}

func putAddr(b []byte, family uint8, a netip.Addr) {
	if family == afInet {
		a4 := a.As4()
		copy(b, a4[:])
		return
	}
	a16 := a.As16() // maps an IPv4 address
	copy(b, a16[:])
}

func (id *sockID) put(b []byte) {
	binary.BigEndian.PutUint16(b[0:], id.src.Port())
	binary.BigEndian.PutUint16(b[2:], id.dst.Port())
	putAddr(b[4:20], id.family, id.src.Addr())
	putAddr(b[20:36], id.family, id.dst.Addr())
	binary.NativeEndian.PutUint32(b[36:], 0) // any interface
	binary.NativeEndian.PutUint32(b[40:], diagNoCookie)
	binary.NativeEndian.PutUint32(b[44:], diagNoCookie)
}

// matches reports whether the inet_diag_sockid b of a reply whose socket
// is of family names the same connection. The kernel writes a socket's
// addresses in its own family's form: a dual-stack socket found by an IPv4
// lookup comes back as AF_INET6 with v4-mapped addresses.
func (id *sockID) matches(family uint8, b []byte) bool {
	addr := func(b []byte) (netip.Addr, bool) {
		switch family {
		case afInet:
			return netip.AddrFrom4([4]byte(b[:4])), true
		case afInet6:
			return netip.AddrFrom16([16]byte(b[:16])).Unmap(), true
		}
		return netip.Addr{}, false
	}
	src, ok1 := addr(b[4:20])
	dst, ok2 := addr(b[20:36])
	return ok1 && ok2 && binary.BigEndian.Uint16(b[0:]) == id.src.Port() && binary.BigEndian.Uint16(b[2:]) == id.dst.Port() &&
		src == id.src.Addr() && dst == id.dst.Addr()
}

// encodeRequest builds the sock_diag request for the one TCP socket named
// by id (an exact lookup: no NLM_F_DUMP).
func encodeRequest(seq uint32, id sockID) []byte {
	b := make([]byte, nlmsgHdrLen+diagReqLen)
	binary.NativeEndian.PutUint32(b[0:], uint32(len(b)))
	binary.NativeEndian.PutUint16(b[4:], sockDiagByFam)
	binary.NativeEndian.PutUint16(b[6:], nlmFRequest)
	binary.NativeEndian.PutUint32(b[8:], seq)
	r := b[nlmsgHdrLen:]
	r[0], r[1] = id.family, ipprotoTCP
	binary.NativeEndian.PutUint32(r[4:], allTCPStates)
	id.put(r[8:])
	return b
}

// parseReply decodes the kernel's answer to encodeRequest(seq, want):
// the socket's uid and inode, ErrNotFound, or an error for a reply that is
// malformed or about another socket. b is outside input as far as this
// function is concerned: it never panics.
func parseReply(b []byte, seq uint32, want sockID) (uid, inode uint32, err error) {
	for len(b) > 0 {
		if len(b) < nlmsgHdrLen {
			return 0, 0, fmt.Errorf("sockowner: truncated netlink header (%d bytes)", len(b))
		}
		n := binary.NativeEndian.Uint32(b[0:])
		if n < nlmsgHdrLen || uint64(n) > uint64(len(b)) {
			return 0, 0, fmt.Errorf("sockowner: netlink message length %d out of range (%d bytes left)", n, len(b))
		}
		typ := binary.NativeEndian.Uint16(b[4:])
		mseq := binary.NativeEndian.Uint32(b[8:])
		body := b[nlmsgHdrLen:n]
		next := (uint64(n) + 3) &^ 3 // messages are 4-byte aligned
		b = b[min(next, uint64(len(b))):]
		if mseq != seq {
			continue
		}
		switch typ {
		case nlmsgError:
			if len(body) < 4 {
				return 0, 0, errors.New("sockowner: truncated netlink error")
			}
			e := int32(binary.NativeEndian.Uint32(body))
			if e == 0 {
				continue // an acknowledgement
			}
			errno := syscall.Errno(uint32(-int64(e)))
			if errno == syscall.ENOENT {
				return 0, 0, ErrNotFound
			}
			return 0, 0, fmt.Errorf("sockowner: sock_diag: %w", errno)
		case nlmsgDone:
			return 0, 0, ErrNotFound
		case sockDiagByFam:
			if len(body) < diagMsgLen {
				return 0, 0, fmt.Errorf("sockowner: inet_diag_msg of %d bytes, want %d", len(body), diagMsgLen)
			}
			if !want.matches(body[0], body[sockIDOffInMsg:sockIDOffInMsg+sockIDLen]) {
				return 0, 0, errors.New("sockowner: sock_diag answered about another socket")
			}
			uid = binary.NativeEndian.Uint32(body[uidOffInMsg:])
			inode = binary.NativeEndian.Uint32(body[inodeOffInMsg:])
			if inode == 0 { // no file behind it (time-wait, orphaned): nobody holds it
				return 0, 0, ErrNotFound
			}
			return uid, inode, nil
		}
	}
	return 0, 0, ErrNotFound
}
