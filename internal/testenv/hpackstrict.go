package testenv

import (
	"fmt"

	"golang.org/x/net/http2/hpack"
)

// StrictHPACK decodes a peer's header blocks as a decoder that holds it to
// RFC 7541 §4.2 would, for raw frame-level test peers: once the peer
// acknowledged a SETTINGS_HEADER_TABLE_SIZE below the table size it last
// signalled, its next block must begin with a dynamic table size update.
type StrictHPACK struct {
	dec       *hpack.Decoder
	signalled uint32 // the table size last set by a size update (4096 at first)
	mustLead  bool
}

// NewStrictHPACK returns a decoder at HTTP/2's initial table size, 4096.
func NewStrictHPACK() *StrictHPACK {
	return &StrictHPACK{dec: hpack.NewDecoder(4096, nil), signalled: 4096}
}

// Acked: the peer acknowledged our SETTINGS_HEADER_TABLE_SIZE n.
func (d *StrictHPACK) Acked(n uint32) {
	d.dec.SetAllowedMaxDynamicTableSize(n)
	if d.signalled > n {
		d.mustLead = true
	}
}

// Decode decodes one whole header block.
func (d *StrictHPACK) Decode(block []byte) ([]hpack.HeaderField, error) {
	p, led := block, false
	for len(p) > 0 && p[0]&0xe0 == 0x20 { // size updates (001xxxxx, a 5-bit prefix)
		v, n := uint64(p[0]&0x1f), 1
		if v == 0x1f {
			for m := uint(0); n < len(p); m += 7 {
				b := p[n]
				n++
				v += uint64(b&0x7f) << m
				if b&0x80 == 0 {
					break
				}
			}
		}
		d.signalled, led, p = uint32(v), true, p[n:]
	}
	if d.mustLead && !led {
		return nil, fmt.Errorf("block %x after a smaller table size was acknowledged does not begin with a size update", block)
	}
	d.mustLead = false
	return d.dec.DecodeFull(block)
}
