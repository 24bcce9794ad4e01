package httpproxy

import (
	"io"
	"sync/atomic"
)

// respBody returns its connection to the pool once read to the end; closed
// early, the connection is closed. Close may come from another goroutine
// than a Read (a retried response given up while read in the background):
// done makes the first of them finish.
type respBody struct {
	pc *poolConn
	// duplex: the request's body went on beside this answer (pc.duplex
	// as the head came; nil: not).
	duplex *duplexWrite
	body   io.ReadCloser
	stop   func() bool
	close  bool // the response said Connection: close
	done   atomic.Bool
}

func (b *respBody) Read(p []byte) (int, error) {
	if b.done.Load() {
		return 0, io.EOF
	}
	n, err := b.body.Read(p)
	if err == io.EOF && b.duplex != nil {
		// An answer whose end was in the reader's buffer already reads
		// to its end past the poison of a body's panic on sendRest: it
		// fails as one still to come does (the caller records a panic).
		if perr := b.duplex.panicked(); perr != nil {
			err = perr
		}
	}
	if err == io.EOF {
		b.finish(true)
	} else if err != nil {
		if b.duplex != nil {
			err = b.duplex.bodyPanic(err)
		}
		b.finish(false)
	}
	return n, err
}

func (b *respBody) Close() error {
	b.finish(false)
	return nil
}

func (b *respBody) BufferedUpstream() int {
	if b.done.Load() {
		return 0
	}
	return b.pc.br.Buffered()
}

func (b *respBody) finish(eof bool) {
	if !b.done.CompareAndSwap(false, true) {
		return
	}
	// Reused only if the response was framed exactly: read to its end and
	// nothing after it (a body on a HEAD response, bytes beyond its
	// length) would be read as the next client's response.
	reuse := eof && !b.close && b.pc.br.Buffered() == 0 && (b.pc.p.cfg.MaxUses <= 0 || b.pc.uses < b.pc.p.cfg.MaxUses)
	if b.pc.duplex != nil {
		reuse = b.pc.endDuplex(reuse) // the body's rest went out whole, or the connection closes
	}
	if b.stop != nil && !b.stop() {
		reuse = false // the context fired: the deadline poisoned the connection
	}
	if reuse {
		b.pc.p.put(b.pc)
	} else {
		b.pc.close()
	}
}
