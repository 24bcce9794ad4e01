package transport

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
)

var testHeader = Header{Namespace: "default", Service: "web", Endpoint: "web-1", Port: "http", Source: "node-a"}

// hdr frames body with the right length.
func hdr(body string) []byte { return frame("FMS1", len(body), body) }

// frame builds a header frame from raw parts.
func frame(magic string, length int, body string) []byte {
	b := []byte(magic)
	b = binary.BigEndian.AppendUint16(b, uint16(length))
	return append(b, body...)
}

const validJSON = `{"namespace":"default","service":"web","endpoint":"web-1","port":"http","source":"node-a"}`

func TestWriteHeaderBytes(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteHeader(&buf, testHeader); err != nil {
		t.Fatal(err)
	}
	if want := frame("FMS1", len(validJSON), validJSON); !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("WriteHeader wrote\n%q\nwant\n%q", buf.Bytes(), want)
	}
}

// TestWriteHeaderL7 pins the wire form: l7 is written only when set, so a
// header without it is byte for byte what older agents wrote.
func TestWriteHeaderL7(t *testing.T) {
	var buf bytes.Buffer
	h := testHeader
	h.L7 = true
	if err := WriteHeader(&buf, h); err != nil {
		t.Fatal(err)
	}
	want := strings.TrimSuffix(validJSON, "}") + `,"l7":true}`
	if got := buf.Bytes(); !bytes.Equal(got, frame("FMS1", len(want), want)) {
		t.Fatalf("WriteHeader wrote\n%q\nwant %q", got, want)
	}
	got, err := ReadHeader(&buf)
	if err != nil || got != h {
		t.Fatalf("round trip: %+v %v", got, err)
	}
}

// TestWriteHeaderUDP pins the wire form of a UDP stream's header: udp is
// written only when set, and l7 with udp is refused both ways.
func TestWriteHeaderUDP(t *testing.T) {
	var buf bytes.Buffer
	h := testHeader
	h.UDP = true
	if err := WriteHeader(&buf, h); err != nil {
		t.Fatal(err)
	}
	want := strings.TrimSuffix(validJSON, "}") + `,"udp":true}`
	if got := buf.Bytes(); !bytes.Equal(got, frame("FMS1", len(want), want)) {
		t.Fatalf("WriteHeader wrote\n%q\nwant %q", got, want)
	}
	got, err := ReadHeader(&buf)
	if err != nil || got != h {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	h.L7 = true
	buf.Reset()
	if err := WriteHeader(&buf, h); err == nil || !strings.Contains(err.Error(), "l7 and udp") || buf.Len() != 0 {
		t.Fatalf("WriteHeader of l7+udp: %v, %d bytes written", err, buf.Len())
	}
}

func TestReadHeader(t *testing.T) {
	tests := []struct {
		name    string
		in      []byte
		want    Header
		wantErr string // substring; "" means success
		bad     bool   // errBadHeader expected
	}{
		{name: "valid", in: frame("FMS1", len(validJSON), validJSON), want: testHeader},
		{name: "valid with trailing stream bytes", in: append(frame("FMS1", len(validJSON), validJSON), "GET /"...), want: testHeader},
		{name: "unknown field ignored", in: hdr(`{"namespace":"a","service":"b","endpoint":"c","port":"d","source":"e","future":1,"x":"yz"}`),
			want: Header{Namespace: "a", Service: "b", Endpoint: "c", Port: "d", Source: "e"}},
		{name: "l7", in: hdr(`{"namespace":"a","service":"b","endpoint":"c","port":"d","source":"e","l7":true}`),
			want: Header{Namespace: "a", Service: "b", Endpoint: "c", Port: "d", Source: "e", L7: true}},
		{name: "l7 false", in: hdr(`{"namespace":"a","service":"b","endpoint":"c","port":"d","source":"e","l7":false}`),
			want: Header{Namespace: "a", Service: "b", Endpoint: "c", Port: "d", Source: "e"}},
		{name: "l7 not a bool", in: hdr(`{"namespace":"a","service":"b","endpoint":"c","port":"d","source":"e","l7":"yes"}`),
			wantErr: "cannot unmarshal", bad: true},
		{name: "udp", in: hdr(`{"namespace":"a","service":"b","endpoint":"c","port":"d","source":"e","udp":true}`),
			want: Header{Namespace: "a", Service: "b", Endpoint: "c", Port: "d", Source: "e", UDP: true}},
		{name: "udp not a bool", in: hdr(`{"namespace":"a","service":"b","endpoint":"c","port":"d","source":"e","udp":1}`),
			wantErr: "cannot unmarshal", bad: true},
		{name: "l7 and udp", in: hdr(`{"namespace":"a","service":"b","endpoint":"c","port":"d","source":"e","l7":true,"udp":true}`),
			wantErr: "l7 and udp together", bad: true},
		{name: "empty input", in: nil, wantErr: "EOF"},
		{name: "bad magic", in: frame("HTTP", len(validJSON), validJSON), wantErr: `bad magic "HTTP"`, bad: true},
		{name: "old version", in: frame("FMS0", len(validJSON), validJSON), wantErr: "bad magic", bad: true},
		{name: "zero length", in: frame("FMS1", 0, ""), wantErr: "length 0 out of range", bad: true},
		{name: "oversize length", in: frame("FMS1", MaxHeaderLen+1, ""), wantErr: "length 4097 out of range", bad: true},
		{name: "max length", in: frame("FMS1", 0xffff, ""), wantErr: "length 65535 out of range", bad: true},
		{name: "truncated prefix", in: []byte("FMS1\x00"), wantErr: "unexpected EOF"},
		{name: "truncated JSON", in: frame("FMS1", len(validJSON), validJSON[:20]), wantErr: "unexpected EOF"},
		{name: "garbage JSON", in: frame("FMS1", 5, "\x00\x01{]x"), wantErr: "invalid character", bad: true},
		{name: "JSON not an object", in: frame("FMS1", 2, "[]"), wantErr: "cannot unmarshal", bad: true},
		{name: "trailing JSON", in: frame("FMS1", 4, "{}{}"), wantErr: "invalid character", bad: true},
		{name: "empty fields", in: frame("FMS1", 2, "{}"), wantErr: "empty namespace", bad: true},
		{name: "empty port", in: hdr(`{"namespace":"a","service":"b","endpoint":"c","port":"","source":"node-a"}`), wantErr: "empty port", bad: true},
		{name: "field too long", in: hdr(`{"namespace":"` + strings.Repeat("n", 254) + `","service":"b","endpoint":"c","port":"d","source":"e"}`),
			wantErr: "namespace of 254 bytes, max 253", bad: true},
		{name: "control character", in: hdr(`{"namespace":"a\n","service":"b","endpoint":"c","port":"d","source":"e"}`),
			wantErr: "control character in namespace", bad: true},
		{name: "invalid UTF-8", in: hdr("{\"namespace\":\"\xff\",\"service\":\"b\",\"endpoint\":\"c\",\"port\":\"d\",\"source\":\"e\"}"),
			wantErr: "not UTF-8", bad: true},
		{name: "case-insensitive keys and escapes", in: hdr(`{"NAMESPACE":"a\u003c","Service":"b/\"","endpoint":"c","port":"d","source":"e"}`),
			want: Header{Namespace: "a<", Service: "b/\"", Endpoint: "c", Port: "d", Source: "e"}},
		{name: "wrong type", in: hdr(`{"namespace":1}`), wantErr: "cannot unmarshal number", bad: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := ReadHeader(bytes.NewReader(tt.in))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("ReadHeader: %v", err)
				}
				if h != tt.want {
					t.Fatalf("ReadHeader = %+v, want %+v", h, tt.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("ReadHeader err = %v, want it to contain %q", err, tt.wantErr)
			}
			if got := errors.Is(err, errBadHeader); got != tt.bad {
				t.Fatalf("errors.Is(err, errBadHeader) = %v, want %v (err %v)", got, tt.bad, err)
			}
		})
	}
}

// TestReadHeaderLeavesStream checks ReadHeader consumes exactly the header.
func TestReadHeaderLeavesStream(t *testing.T) {
	r := bytes.NewReader(append(frame("FMS1", len(validJSON), validJSON), "rest"...))
	if _, err := ReadHeader(r); err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(r)
	if string(rest) != "rest" {
		t.Fatalf("after header: %q, want %q", rest, "rest")
	}
}

func TestWriteHeaderRejects(t *testing.T) {
	tests := []struct {
		name    string
		h       Header
		wantErr string
	}{
		{"empty source", Header{Namespace: "a", Service: "b", Endpoint: "c", Port: "d"}, "empty source"},
		{"field too long", Header{Namespace: "a", Service: "b", Endpoint: strings.Repeat("n", MaxFieldLen+1), Port: "d", Source: "e"}, "endpoint of 254 bytes"},
		{"control character", Header{Namespace: "a", Service: "b", Endpoint: "c", Port: "d\x00", Source: "e"}, "control character in port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			err := WriteHeader(&buf, tt.h)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("WriteHeader err = %v, want %q", err, tt.wantErr)
			}
			if buf.Len() != 0 {
				t.Fatalf("WriteHeader wrote %d bytes on error", buf.Len())
			}
		})
	}
}

func TestStatus(t *testing.T) {
	tests := []struct {
		name    string
		in      []byte
		code    Status
		msg     string
		wantErr string
	}{
		{name: "ok", in: []byte{0, 0, 0}, code: StatusOK},
		{name: "refused with message", in: []byte("\x01\x00\x04nope"), code: StatusRefused, msg: "nope"},
		{name: "bad utf8 replaced", in: []byte("\x02\x00\x02\xff!"), code: StatusDialFailed, msg: "\uFFFD!"},
		{name: "denied", in: []byte("\x04\x00\x06policy"), code: StatusDenied, msg: "policy"},
		{name: "unknown code", in: []byte{9, 0, 0}, wantErr: "unknown status(9)"},
		{name: "oversize message", in: []byte{3, 0xff, 0xff}, wantErr: "message length 65535"},
		{name: "truncated message", in: []byte("\x03\x00\x09bad"), wantErr: "unexpected EOF"},
		{name: "empty", in: nil, wantErr: "EOF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, msg, err := ReadStatus(bytes.NewReader(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ReadStatus err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || code != tt.code || msg != tt.msg {
				t.Fatalf("ReadStatus = %v, %q, %v; want %v, %q", code, msg, err, tt.code, tt.msg)
			}
			var buf bytes.Buffer
			if err := WriteStatus(&buf, code, msg); err != nil {
				t.Fatal(err)
			}
			if string(tt.in[3:]) == tt.msg && !bytes.Equal(buf.Bytes(), tt.in) {
				t.Fatalf("WriteStatus = %q, want %q", buf.Bytes(), tt.in)
			}
		})
	}
}

func TestWriteStatusTruncates(t *testing.T) {
	var buf bytes.Buffer
	long := strings.Repeat("é", MaxStatusMsgLen) // 2 bytes each: cut mid-rune
	if err := WriteStatus(&buf, StatusDialFailed, long); err != nil {
		t.Fatal(err)
	}
	code, msg, err := ReadStatus(&buf)
	if err != nil || code != StatusDialFailed {
		t.Fatalf("ReadStatus = %v, %v", code, err)
	}
	if len(msg) > MaxStatusMsgLen || !strings.HasPrefix(long, msg) || len(msg) < MaxStatusMsgLen-1 {
		t.Fatalf("message of %d bytes, want a %d-byte prefix", len(msg), MaxStatusMsgLen)
	}
}

// FuzzReadHeader feeds arbitrary bytes to ReadHeader. It must never panic,
// and whatever it accepts must survive a WriteHeader/ReadHeader round trip.
// Seeds are in testdata/fuzz/FuzzReadHeader.
func FuzzReadHeader(f *testing.F) {
	f.Add(frame("FMS1", len(validJSON), validJSON))
	f.Add(hdr(`{"namespace":"a","service":"b","endpoint":"c","port":"d","source":"e","sourceId":"spiffe://x/y","l7":true}`))
	f.Add(hdr(`{"namespace":"a","service":"b","endpoint":"c","port":"d","source":"e","udp":true}`))
	f.Add(hdr(`{"namespace":"a","service":"b","endpoint":"c","port":"d","source":"e","l7":true,"udp":true}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		h, err := ReadHeader(bytes.NewReader(in))
		if err != nil {
			return
		}
		var buf bytes.Buffer
		if err := WriteHeader(&buf, h); err != nil {
			t.Fatalf("WriteHeader(%+v) of an accepted header: %v", h, err)
		}
		h2, err := ReadHeader(&buf)
		if err != nil {
			t.Fatalf("ReadHeader of WriteHeader output: %v", err)
		}
		if h2 != h {
			t.Fatalf("round trip: %+v != %+v", h2, h)
		}
	})
}
