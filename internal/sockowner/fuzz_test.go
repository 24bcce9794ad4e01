package sockowner

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"syscall"
	"testing"
)

var testID = newSockID(afInet, netip.MustParseAddrPort("127.0.0.50:40000"), netip.MustParseAddrPort("127.77.0.1:80"))

// diagMsg is a SOCK_DIAG_BY_FAMILY reply as the kernel writes it.
func diagMsg(seq uint32, id sockID, uid, inode uint32) []byte {
	b := make([]byte, nlmsgHdrLen+diagMsgLen)
	binary.NativeEndian.PutUint32(b[0:], uint32(len(b)))
	binary.NativeEndian.PutUint16(b[4:], sockDiagByFam)
	binary.NativeEndian.PutUint32(b[8:], seq)
	m := b[nlmsgHdrLen:]
	m[0], m[1] = id.family, 1 // TCP_ESTABLISHED
	id.put(m[sockIDOffInMsg:])
	binary.NativeEndian.PutUint32(m[uidOffInMsg:], uid)
	binary.NativeEndian.PutUint32(m[inodeOffInMsg:], inode)
	return b
}

// msg is one netlink message of type typ around body.
func msg(typ uint16, seq uint32, body []byte) []byte {
	b := make([]byte, nlmsgHdrLen, nlmsgHdrLen+len(body))
	binary.NativeEndian.PutUint32(b[0:], uint32(nlmsgHdrLen+len(body)))
	binary.NativeEndian.PutUint16(b[4:], typ)
	binary.NativeEndian.PutUint32(b[8:], seq)
	return append(b, body...)
}

// errMsg is an NLMSG_ERROR reply carrying -errno.
func errMsg(seq uint32, errno syscall.Errno) []byte {
	b := make([]byte, nlmsgHdrLen+4+nlmsgHdrLen)
	binary.NativeEndian.PutUint32(b[0:], uint32(len(b)))
	binary.NativeEndian.PutUint16(b[4:], nlmsgError)
	binary.NativeEndian.PutUint32(b[8:], seq)
	binary.NativeEndian.PutUint32(b[nlmsgHdrLen:], uint32(-int32(errno)))
	return b
}

func TestParseReply(t *testing.T) {
	other := newSockID(afInet, netip.MustParseAddrPort("127.0.0.51:40000"), netip.MustParseAddrPort("127.77.0.1:80"))
	cases := []struct {
		name    string
		b       []byte
		uid     uint32
		inode   uint32
		wantErr error  // errors.Is
		errText string // else a substring
	}{
		{name: "found", b: diagMsg(7, testID, 1000, 4242), uid: 1000, inode: 4242},
		{name: "ack then found", b: append(errMsg(7, 0), diagMsg(7, testID, 0, 9)...), uid: 0, inode: 9},
		{name: "stale seq skipped", b: append(diagMsg(6, testID, 1, 1), diagMsg(7, testID, 2, 2)...), uid: 2, inode: 2},
		{name: "enoent", b: errMsg(7, syscall.ENOENT), wantErr: ErrNotFound},
		{name: "eperm", b: errMsg(7, syscall.EPERM), wantErr: syscall.EPERM},
		{name: "done", b: msg(nlmsgDone, 7, []byte{0, 0, 0, 0}), wantErr: ErrNotFound},
		{name: "short diag msg", b: msg(sockDiagByFam, 7, make([]byte, 20)), errText: "inet_diag_msg of 20 bytes"},
		{name: "unknown type skipped", b: append(msg(99, 7, []byte{1, 2, 3}), append([]byte{0}, diagMsg(7, testID, 3, 3)...)...), uid: 3, inode: 3},
		{name: "no inode", b: diagMsg(7, testID, 0, 0), wantErr: ErrNotFound},
		{name: "another socket", b: diagMsg(7, other, 0, 5), errText: "another socket"},
		{name: "empty", b: nil, wantErr: ErrNotFound},
		{name: "short header", b: make([]byte, 5), errText: "truncated netlink header"},
		{name: "length past end", b: diagMsg(7, testID, 0, 5)[:40], errText: "out of range"},
		{name: "zero length", b: make([]byte, 16), errText: "out of range"},
		{name: "short error", b: msg(nlmsgError, 7, []byte{1, 2}), errText: "truncated netlink error"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			uid, inode, err := parseReply(c.b, 7, testID)
			switch {
			case c.wantErr != nil:
				if !errors.Is(err, c.wantErr) {
					t.Fatalf("err = %v, want %v", err, c.wantErr)
				}
			case c.errText != "":
				if err == nil || !contains(err.Error(), c.errText) {
					t.Fatalf("err = %v, want one saying %q", err, c.errText)
				}
			default:
				if err != nil || uid != c.uid || inode != c.inode {
					t.Fatalf("got uid %d inode %d err %v, want %d %d", uid, inode, err, c.uid, c.inode)
				}
			}
		})
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

// FuzzParseReply feeds arbitrary kernel replies to the decoder: it must
// not panic, and it may name a socket only from a well-formed message about
// the socket asked for.
func FuzzParseReply(f *testing.F) {
	f.Add(diagMsg(7, testID, 1000, 4242))
	f.Add(append(errMsg(7, 0), diagMsg(7, testID, 0, 9)...))
	f.Add(errMsg(7, syscall.ENOENT))
	f.Add(errMsg(7, syscall.Errno(1<<31)))
	f.Add(diagMsg(7, testID, 0, 0)[:40])
	f.Add(append(diagMsg(6, testID, 1, 1), 0, 0, 0))
	f.Add([]byte{})
	f.Add(msg(nlmsgDone, 7, nil))
	f.Add(msg(nlmsgError, 7, []byte{1, 2}))
	f.Fuzz(func(t *testing.T, b []byte) {
		uid, inode, err := parseReply(b, 7, testID)
		if err != nil {
			if uid != 0 || inode != 0 {
				t.Fatalf("error %v with uid %d inode %d", err, uid, inode)
			}
			return
		}
		if inode == 0 {
			t.Fatal("no error and no inode")
		}
		if len(b) < nlmsgHdrLen+diagMsgLen {
			t.Fatalf("a socket from %d bytes", len(b))
		}
	})
}

func TestEncodeRequest(t *testing.T) {
	b := encodeRequest(9, testID)
	if len(b) != 72 || binary.NativeEndian.Uint32(b) != 72 {
		t.Fatalf("request of %d bytes (header says %d), want 72", len(b), binary.NativeEndian.Uint32(b))
	}
	if typ, flags := binary.NativeEndian.Uint16(b[4:]), binary.NativeEndian.Uint16(b[6:]); typ != 20 || flags != 1 {
		t.Fatalf("type %d flags %#x, want SOCK_DIAG_BY_FAMILY and NLM_F_REQUEST only", typ, flags)
	}
	r := b[nlmsgHdrLen:]
	if r[0] != afInet || r[1] != ipprotoTCP {
		t.Fatalf("family %d protocol %d", r[0], r[1])
	}
	id := r[8:]
	if sp, dp := binary.BigEndian.Uint16(id), binary.BigEndian.Uint16(id[2:]); sp != 40000 || dp != 80 {
		t.Fatalf("ports %d -> %d, want 40000 -> 80 (big endian)", sp, dp)
	}
	if got := netip.AddrFrom4([4]byte(id[4:8])); got != netip.MustParseAddr("127.0.0.50") {
		t.Fatalf("src %v", got)
	}
	if !testID.matches(afInet, id) {
		t.Fatal("request id does not match itself")
	}
	// The same connection in a dual-stack socket's form.
	v6 := newSockID(afInet6, netip.MustParseAddrPort("127.0.0.50:40000"), netip.MustParseAddrPort("127.77.0.1:80"))
	b6 := encodeRequest(9, v6)[nlmsgHdrLen+8:]
	if got := netip.AddrFrom16([16]byte(b6[4:20])); got != netip.MustParseAddr("::ffff:127.0.0.50") {
		t.Fatalf("AF_INET6 src %v, want v4-mapped", got)
	}
	if !testID.matches(afInet6, b6) || !v6.matches(afInet, id) {
		t.Fatal("v4-mapped and plain IPv4 forms of one connection do not match")
	}
	if testID.matches(0, id) {
		t.Fatal("an unknown family matched")
	}
}
