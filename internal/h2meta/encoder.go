package h2meta

import (
	"bytes"

	"golang.org/x/net/http2/hpack"
)

// Encoder is an hpack.Encoder writing into a bytes.Buffer that remembers
// the encodings of the last fields it wrote that left the dynamic table
// as it was (an indexed field, a literal not indexed). While the table
// stays so, the same field encodes to the same bytes, written again
// without the encoder's table searches (two to four map lookups, each
// hashing name and value). A proxy encodes the same fields on most
// header blocks of a connection (:authority, :method, :scheme, user-agent,
// x-forwarded-*, :status, content-type), indexed after their first block.
//
// Any encoding that may change the table (a literal with incremental
// indexing, a table size update) and any change of the table's size limit
// forget every remembered encoding: the indexes in them may no longer
// hold. Sensitive fields are not remembered, nor long ones (encField).
// Not safe for concurrent use; FuzzEncoderMatchesHpack holds its output,
// decoded, to the fields given.
type Encoder struct {
	enc  *hpack.Encoder
	w    encWriter
	gen  uint64 // bumped whenever the dynamic table may change
	next int    // the slot to fill next, and to search first
	tab  [encSlots]encoded
}

const (
	encSlots = 16 // fields remembered
	encBytes = 22 // the longest encoding remembered
	// encField is the longest field (name and value) remembered: an
	// indexed field encodes to a byte or two however long its value, and
	// the slots keep their strings alive after the table let them go.
	// encSlots of these stay within a 4 KiB table's size.
	encField = 256
)

type encoded struct {
	name, value string
	gen         uint64
	n           uint8
	b           [encBytes]byte
}

// encWriter appends the encoder's writes to buf, noting those that change
// the dynamic table: hpack.Encoder writes each field's representation
// (and a table size update before a block's first) in one Write.
type encWriter struct {
	buf     *bytes.Buffer
	changed bool
}

func (w *encWriter) Write(p []byte) (int, error) {
	// RFC 7541 §6: 1xxxxxxx indexed; 01xxxxxx literal with incremental
	// indexing; 001xxxxx dynamic table size update; 0000xxxx and 0001xxxx
	// literals without indexing and never indexed.
	if len(p) > 0 && p[0]&0x80 == 0 && p[0]&0x60 != 0 {
		w.changed = true
	}
	return w.buf.Write(p)
}

// NewEncoder returns an Encoder writing to buf.
func NewEncoder(buf *bytes.Buffer) *Encoder {
	e := &Encoder{w: encWriter{buf: buf}}
	e.enc = hpack.NewEncoder(&e.w)
	return e
}

// WriteField encodes f, as hpack.Encoder.WriteField.
func (e *Encoder) WriteField(f hpack.HeaderField) {
	if !f.Sensitive {
		// From the slot after the last one used: a block's fields come in
		// the order of the last block's, mostly.
		for i, j := 0, e.next; i < encSlots; i, j = i+1, (j+1)%encSlots {
			c := &e.tab[j]
			if c.gen == e.gen && c.n > 0 && c.name == f.Name && c.value == f.Value {
				e.w.buf.Write(c.b[:c.n])
				e.next = (j + 1) % encSlots
				return
			}
		}
	}
	start := e.w.buf.Len()
	e.w.changed = false
	e.enc.WriteField(f)
	if e.w.changed {
		e.gen++
		return
	}
	b := e.w.buf.Bytes()[start:]
	if f.Sensitive || len(b) > encBytes || len(f.Name)+len(f.Value) > encField {
		return
	}
	c := &e.tab[e.next]
	c.name, c.value, c.gen, c.n = f.Name, f.Value, e.gen, uint8(copy(c.b[:], b))
	e.next = (e.next + 1) % encSlots
}

// SetMaxDynamicTableSizeLimit is hpack.Encoder's: the peer's
// SETTINGS_HEADER_TABLE_SIZE. Called between header blocks.
func (e *Encoder) SetMaxDynamicTableSizeLimit(v uint32) {
	e.gen++
	e.enc.SetMaxDynamicTableSizeLimit(v)
}
