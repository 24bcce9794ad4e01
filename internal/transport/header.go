// Package transport is the agent-to-agent mesh port. An agent reaches a
// remote endpoint through the agent on the endpoint's node: it keeps one
// multiplexed connection (yamux over mutual TLS 1.3, or plain TCP in insecure
// mode) per peer agent, opens a stream per
// proxied connection, names the destination in a small header, and the peer
// agent connects to its local workload and relays bytes. It exists so that
// nodes need exactly one reachable port between them, whatever services run
// behind it, and so that the connection between agents is the single place
// where identity is enforced (ServerConfig.TLS, ClientConfig.TLS).
//
// This file holds the stream wire format only: constants and the functions
// that read and write a header and a status, with no other I/O.
package transport

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Stream wire format. Every mesh stream (a yamux stream, or a QUIC stream:
// quic.go) starts with one header from the opener (client) and one status
// from the acceptor (server):
//
//	client -> server   "FMS1"           4 bytes, Magic
//	                   length           uint16, big endian, 1..MaxHeaderLen
//	                   JSON Header      length bytes:
//	                     {"namespace":"..","service":"..","endpoint":"..",
//	                      "port":"..","source":"..",
//	                      "sourceId":"..","l7":true,"udp":true}
//	                   every field but sourceId, l7 and udp non-empty, at most MaxFieldLen bytes of
//	                   UTF-8 without control characters; unknown fields
//	                   are ignored.
//
//	server -> client   status           1 byte, a Status
//	                   length           uint16, big endian, 0..MaxStatusMsgLen
//	                   message          length bytes, UTF-8, human readable
//
// After StatusOK the stream carries the relayed bytes in both directions;
// on a udp stream those are datagrams, each framed by package udpframe (a
// 2-byte big-endian length, then the datagram).
// After any other status the server closes the stream.
const (
	// Magic opens every stream and names the version of this format.
	Magic = "FMS1"
	// MaxHeaderLen is the largest JSON header, in bytes.
	MaxHeaderLen = 4 << 10
	// MaxFieldLen is the longest header field, in bytes (a DNS name). With
	// five fields JSON escaping cannot push a valid header past MaxHeaderLen.
	MaxFieldLen = 253
	// MaxStatusMsgLen is the largest status message, in bytes. Longer
	// messages are truncated by WriteStatus and rejected by ReadStatus.
	MaxStatusMsgLen = 4 << 10
)

// Status is the server's answer to a stream header.
type Status byte

const (
	StatusOK         Status = 0 // connected; relayed bytes follow
	StatusRefused    Status = 1 // the destination is not an endpoint on this node
	StatusDialFailed Status = 2 // the local workload could not be reached
	StatusBadHeader  Status = 3 // the header was malformed, too large or too slow
	StatusDenied     Status = 4 // an authorization policy denies this source the destination
)

func (s Status) String() string {
	switch s {
	case StatusOK:
		return "ok"
	case StatusRefused:
		return "refused"
	case StatusDialFailed:
		return "dial failed"
	case StatusBadHeader:
		return "bad header"
	case StatusDenied:
		return "denied"
	}
	return fmt.Sprintf("status(%d)", byte(s))
}

// Header names the destination of a stream.
type Header struct {
	Namespace string `json:"namespace"`
	Service   string `json:"service"`
	Endpoint  string `json:"endpoint"`
	Port      string `json:"port"`   // service port name
	Source    string `json:"source"` // name of the node that opened the stream
	// SourceID is the SPIFFE ID of the workload that opened the proxied
	// connection, as the source agent knows it (optional). The destination
	// agent trusts it only as far as it trusts the source node.
	SourceID string `json:"sourceId,omitempty"`
	// L7 marks a stream the source agent's HTTP proxy opened: the bytes
	// on it are HTTP requests the source agent wrote, with the identity
	// and X-Forwarded-* headers it set. Without it (a relayed client
	// connection, or an agent that predates the field) the destination
	// takes no identity or forwarding header from the bytes. Omitted when
	// false, so older agents, which ignore unknown fields, read the same
	// header as before.
	L7 bool `json:"l7,omitempty"`
	// UDP marks a stream that carries one UDP flow: datagrams framed by
	// package udpframe, which the destination agent sends to its workload
	// over UDP. Exclusive with L7. Omitted when false, so a header without
	// it is byte for byte what older agents wrote (an older destination
	// agent ignores it and dials TCP: UDP services need both agents
	// updated).
	UDP bool `json:"udp,omitempty"`
}

func (h Header) String() string {
	return fmt.Sprintf("%s/%s/%s:%s (from %s)", h.Namespace, h.Service, h.Endpoint, h.Port, h.Source)
}

// errBadHeader marks a header that arrived but is malformed, as opposed to
// an I/O error while reading it.
var errBadHeader = errors.New("bad stream header")

// validate reports the first field of h that is empty, too long, not UTF-8
// or holds control characters, or l7 and udp both set (HTTP requests the
// source agent wrote cannot be datagrams).
func (h Header) validate() error {
	if h.L7 && h.UDP {
		return fmt.Errorf("%w: l7 and udp together", errBadHeader)
	}
	for _, f := range []struct{ name, v string }{
		{"namespace", h.Namespace},
		{"service", h.Service},
		{"endpoint", h.Endpoint},
		{"port", h.Port},
		{"source", h.Source},
		{"sourceId", h.SourceID},
	} {
		switch {
		case f.v == "" && f.name == "sourceId":
			continue
		case f.v == "":
			return fmt.Errorf("%w: empty %s", errBadHeader, f.name)
		case len(f.v) > MaxFieldLen:
			return fmt.Errorf("%w: %s of %d bytes, max %d", errBadHeader, f.name, len(f.v), MaxFieldLen)
		case !utf8.ValidString(f.v):
			return fmt.Errorf("%w: %s is not UTF-8", errBadHeader, f.name)
		case strings.IndexFunc(f.v, unicode.IsControl) >= 0:
			return fmt.Errorf("%w: control character in %s %q", errBadHeader, f.name, f.v)
		}
	}
	return nil
}

// WriteHeader writes Magic, the length and h as JSON to w in a single Write.
func WriteHeader(w io.Writer, h Header) error {
	if err := h.validate(); err != nil {
		return err
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(h); err != nil {
		return fmt.Errorf("encode header: %w", err)
	}
	js := bytes.TrimSuffix(b.Bytes(), []byte("\n"))
	if len(js) > MaxHeaderLen {
		return fmt.Errorf("%w: %d bytes, max %d", errBadHeader, len(js), MaxHeaderLen)
	}
	buf := make([]byte, 0, len(Magic)+2+len(js))
	buf = append(buf, Magic...)
	buf = binary.BigEndian.AppendUint16(buf, uint16(len(js)))
	buf = append(buf, js...)
	if _, err := w.Write(buf); err != nil {
		return fmt.Errorf("write header: %w", err)
	}
	return nil
}

// ReadHeader reads one header from r. It reads exactly the header's bytes
// and no more, so r can carry relayed bytes after it. Malformed input (bad
// magic, length 0 or over MaxHeaderLen, bad JSON, an empty field) is
// rejected; a stream that ends early returns io.ErrUnexpectedEOF (io.EOF if
// it ended before the first byte).
func ReadHeader(r io.Reader) (Header, error) {
	var pre [len(Magic) + 2]byte
	if _, err := io.ReadFull(r, pre[:]); err != nil {
		return Header{}, fmt.Errorf("read header: %w", err)
	}
	if string(pre[:len(Magic)]) != Magic {
		return Header{}, fmt.Errorf("%w: bad magic %q", errBadHeader, pre[:len(Magic)])
	}
	n := int(binary.BigEndian.Uint16(pre[len(Magic):]))
	if n == 0 || n > MaxHeaderLen {
		return Header{}, fmt.Errorf("%w: length %d out of range 1..%d", errBadHeader, n, MaxHeaderLen)
	}
	js := make([]byte, n)
	if _, err := io.ReadFull(r, js); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return Header{}, fmt.Errorf("read header body: %w", err)
	}
	// Unmarshal would quietly replace invalid UTF-8; refuse it instead.
	if !utf8.Valid(js) {
		return Header{}, fmt.Errorf("%w: not UTF-8", errBadHeader)
	}
	var h Header
	if err := json.Unmarshal(js, &h); err != nil {
		return Header{}, fmt.Errorf("%w: %v", errBadHeader, err)
	}
	if err := h.validate(); err != nil {
		return Header{}, err
	}
	return h, nil
}

// WriteStatus writes code and msg to w in a single Write. msg is made valid
// UTF-8 and truncated to MaxStatusMsgLen bytes.
func WriteStatus(w io.Writer, code Status, msg string) error {
	msg = strings.ToValidUTF8(msg, "\uFFFD")
	if len(msg) > MaxStatusMsgLen {
		msg = msg[:MaxStatusMsgLen]
		for !utf8.ValidString(msg) { // cut inside a rune
			msg = msg[:len(msg)-1]
		}
	}
	buf := make([]byte, 0, 3+len(msg))
	buf = append(buf, byte(code))
	buf = binary.BigEndian.AppendUint16(buf, uint16(len(msg)))
	buf = append(buf, msg...)
	if _, err := w.Write(buf); err != nil {
		return fmt.Errorf("write status: %w", err)
	}
	return nil
}

// ReadStatus reads one status from r, and no more bytes than it. An unknown
// code or an oversize message is an error; invalid UTF-8 in the message is
// replaced.
func ReadStatus(r io.Reader) (code Status, msg string, err error) {
	var pre [3]byte
	if _, err := io.ReadFull(r, pre[:]); err != nil {
		return 0, "", fmt.Errorf("read status: %w", err)
	}
	code = Status(pre[0])
	if code > StatusDenied {
		return 0, "", fmt.Errorf("read status: unknown %v", code)
	}
	n := int(binary.BigEndian.Uint16(pre[1:]))
	if n > MaxStatusMsgLen {
		return 0, "", fmt.Errorf("read status: message length %d over %d", n, MaxStatusMsgLen)
	}
	if n == 0 {
		return code, "", nil
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, "", fmt.Errorf("read status message: %w", err)
	}
	return code, strings.ToValidUTF8(string(b), "\uFFFD"), nil
}
