// Package h2meta reads HTTP/2 frames with header blocks decoded, as
// golang.org/x/net/http2's Framer does with ReadMetaHeaders set (the same
// checks, limits and errors: FuzzMatchesXNet holds it to that), without
// its allocations per block: the Framer makes a MetaHeadersFrame, an emit
// closure and a field slice grown by appends for every block; here one
// MetaHeadersFrame, its field slice and the decoder's emit function are
// set up once per connection and reused. The returned frame is valid until
// the next read, as the Framer's frames are. A block of indexed fields
// read before, the table unchanged since, is not decoded again. Encoder is
// the writing side's counterpart: hpack.Encoder remembering the encodings
// of the fields a connection repeats.
package h2meta

import (
	"errors"
	"strings"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Reader reads the frames of one connection (its read loop only).
type Reader struct {
	fr      *http2.Framer
	dec     *hpack.Decoder
	maxList uint32
	mh      http2.MetaHeadersFrame
	fields  []hpack.HeaderField // the last block's fields: their storage is reused

	// The block being decoded (emit).
	headersLeft, trailersLeft uint32
	sawRegular                bool
	invalid                   error

	// Recent blocks of one frame whose every field was indexed, and their
	// fields. Such a block leaves the decoder's table as it was: while
	// only such blocks come, the same bytes decode to the same fields,
	// copied here instead (a client's requests, a server's responses,
	// are mostly the same block again once their fields are indexed).
	// Any other block forgets them.
	known     [knownBlocks]knownBlock
	nextKnown int
}

const (
	knownBlocks    = 2   // a gRPC response's header block and its trailers
	knownMaxBlock  = 256 // bytes
	knownMaxFields = 32
)

type knownBlock struct {
	block  []byte
	fields []hpack.HeaderField
}

// New reads fr's frames; maxList is the largest header list accepted
// (SETTINGS_MAX_HEADER_LIST_SIZE; 0: the Framer's default, 16 MiB). fr's
// ReadMetaHeaders must stay nil.
func New(fr *http2.Framer, maxList uint32) *Reader {
	if maxList == 0 {
		maxList = 16 << 20
	}
	r := &Reader{fr: fr, dec: hpack.NewDecoder(4096, nil), maxList: maxList}
	fr.MaxHeaderListSize = maxList
	r.dec.SetEmitFunc(r.emit)
	if n := int(maxList); n > 0 { // as the Framer's maxHeaderStringLen
		r.dec.SetMaxStringLength(n)
	}
	return r
}

// ReadFrame is Framer.ReadFrame with ReadMetaHeaders: a HEADERS frame and
// its CONTINUATION frames come as one *http2.MetaHeadersFrame.
func (r *Reader) ReadFrame() (http2.Frame, error) {
	f, err := r.fr.ReadFrame()
	if err != nil {
		return nil, err
	}
	if hf, ok := f.(*http2.HeadersFrame); ok {
		return r.readMeta(hf)
	}
	return f, nil
}

var (
	errPseudoAfterRegular = errors.New("pseudo header field after regular")
	errMixPseudo          = errors.New("mix of request and response pseudo headers")
)

type fieldError struct {
	what, name string
}

func (e *fieldError) Error() string { return "invalid header field " + e.what + " for " + e.name }

// emit takes one decoded field: the Framer's checks (valid name and
// value, pseudo-headers first) and its size budget.
func (r *Reader) emit(hf hpack.HeaderField) {
	if !httpguts.ValidHeaderFieldValue(hf.Value) {
		r.invalid = &fieldError{"value", hf.Name} // the value may be sensitive: not in the error
	}
	if strings.HasPrefix(hf.Name, ":") {
		if r.sawRegular {
			r.invalid = errPseudoAfterRegular
		}
	} else {
		r.sawRegular = true
		if !validWireName(hf.Name) {
			r.invalid = &fieldError{"name", hf.Name}
		}
	}
	if r.invalid != nil {
		r.dec.SetEmitEnabled(false)
		return
	}
	left, size := &r.headersLeft, hf.Size()
	if hf.Name == "trailer" {
		// As the Framer: each listed name costs a field's overhead.
		left = &r.trailersLeft
		n := strings.Count(hf.Value, ",") + 1
		size = uint32(len(hf.Value)-n+1) + uint32(n)*hpack.HeaderField{}.Size()
	}
	if size > *left {
		r.dec.SetEmitEnabled(false)
		r.mh.Truncated = true
		r.headersLeft, r.trailersLeft = 0, 0
		return
	}
	*left -= size
	r.mh.Fields = append(r.mh.Fields, hf)
}

// validWireName is x/net's validWireHeaderFieldName: a token, no upper
// case.
func validWireName(v string) bool {
	if v == "" {
		return false
	}
	for _, c := range v {
		if !httpguts.IsTokenRune(c) || 'A' <= c && c <= 'Z' {
			return false
		}
	}
	return true
}

// maxKeptFields is the most field slots a Reader keeps for the next block:
// typical blocks reuse storage, and one block of many fields (up to the
// header list limit, a megabyte and more of slots) is not held for the
// connection's life.
const maxKeptFields = 128

// readMeta decodes the block hf starts, as the Framer's readMetaFrame.
func (r *Reader) readMeta(hf *http2.HeadersFrame) (http2.Frame, error) {
	clear(r.fields) // the last block's strings are not kept alive
	r.mh = http2.MetaHeadersFrame{HeadersFrame: hf, Fields: r.fields[:0]}
	r.fields = nil
	r.headersLeft, r.trailersLeft = r.maxList, r.maxList
	r.sawRegular, r.invalid = false, nil
	frag, ended := hf.HeaderBlockFragment(), hf.HeadersEnded()
	if ended {
		for i := range r.known {
			if k := &r.known[i]; k.block != nil && string(k.block) == string(frag) {
				r.mh.Fields = append(r.mh.Fields, k.fields...)
				r.fields = r.mh.Fields
				return &r.mh, nil
			}
		}
	}
	whole := ended // the block is frag alone
	r.dec.SetEmitEnabled(true)
	for {
		// A fragment far over what is left of the budget, or any after
		// an invalid field, ends the connection without decoding it.
		if int64(len(frag)) > 2*int64(r.headersLeft+r.trailersLeft) || r.invalid != nil {
			return nil, http2.ConnectionError(http2.ErrCodeProtocol)
		}
		if _, err := r.dec.Write(frag); err != nil {
			return nil, http2.ConnectionError(http2.ErrCodeCompression)
		}
		if ended {
			break
		}
		f, err := r.fr.ReadFrame()
		if err != nil {
			return nil, err
		}
		cf := f.(*http2.ContinuationFrame) // the Framer's frame order check
		frag, ended = cf.HeaderBlockFragment(), cf.HeadersEnded()
	}
	indexed := whole && allIndexed(frag)
	if !indexed {
		r.forgetKnown() // the table may have changed
	}
	r.fields = r.mh.Fields
	if cap(r.fields) > maxKeptFields {
		r.fields = nil // a rare large block's storage goes with its frame, not the connection
	}
	if err := r.dec.Close(); err != nil {
		return nil, http2.ConnectionError(http2.ErrCodeCompression)
	}
	if r.invalid != nil {
		return nil, http2.StreamError{StreamID: hf.StreamID, Code: http2.ErrCodeProtocol, Cause: r.invalid}
	}
	if err := checkPseudos(r.mh.PseudoFields()); err != nil {
		return nil, http2.StreamError{StreamID: hf.StreamID, Code: http2.ErrCodeProtocol, Cause: err}
	}
	if indexed && !r.mh.Truncated && len(frag) <= knownMaxBlock && len(r.mh.Fields) <= knownMaxFields {
		k := &r.known[r.nextKnown]
		r.nextKnown = (r.nextKnown + 1) % knownBlocks
		k.block = append(k.block[:0], frag...)
		k.fields = append(k.fields[:0], r.mh.Fields...)
	}
	return &r.mh, nil
}

func (r *Reader) forgetKnown() {
	for i := range r.known {
		k := &r.known[i]
		clear(k.fields) // their strings are not kept alive
		k.block, k.fields = nil, k.fields[:0]
	}
}

// allIndexed reports whether block is only indexed field representations
// (RFC 7541 §6.1: 1xxxxxxx, an integer of a 7-bit prefix): a block that
// inserts nothing in the table and updates nothing.
func allIndexed(block []byte) bool {
	for i := 0; i < len(block); {
		b := block[i]
		i++
		if b&0x80 == 0 {
			return false
		}
		if b&0x7f != 0x7f {
			continue
		}
		for { // the integer's continuation bytes, the last without 0x80
			if i >= len(block) {
				return false
			}
			i++
			if block[i-1]&0x80 == 0 {
				break
			}
		}
	}
	return true
}

// checkPseudos is the Framer's: known pseudo-headers, each once, not of
// both a request and a response.
func checkPseudos(pf []hpack.HeaderField) error {
	var isRequest, isResponse bool
	for i, hf := range pf {
		switch hf.Name {
		case ":method", ":path", ":scheme", ":authority", ":protocol":
			isRequest = true
		case ":status":
			isResponse = true
		default:
			return &fieldError{"pseudo-header", hf.Name}
		}
		for _, hf2 := range pf[:i] {
			if hf.Name == hf2.Name {
				return &fieldError{"duplicate pseudo-header", hf.Name}
			}
		}
	}
	if isRequest && isResponse {
		return errMixPseudo
	}
	return nil
}
