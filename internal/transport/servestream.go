package transport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/fogmesh/fogmesh/internal/proxy"
)

// meshStream is one mesh stream, whatever carries it (a yamux stream or a
// QUIC stream): a net.Conn whose CloseWrite half-closes it.
type meshStream interface {
	net.Conn
	CloseWrite() error
}

// serveStream reads one stream's header, connects it to the local workload
// and relays until both sides are done.
// It gives back the place pc's peer had for it (PeerStreams.acquire) when
// it ends.
func (s *Server) serveStream(ctx context.Context, c meshStream, pc *peerCount) {
	s.serveStreamFrom(ctx, c, nil, pc)
}

// serveStreamFrom is serveStream on a stream whose first bytes, pre, were
// read already.
func (s *Server) serveStreamFrom(ctx context.Context, c meshStream, pre []byte, pc *peerCount) {
	s.serveStreamThen(ctx, c, pre, pc, nil)
}

// serveStreamThen is serveStreamFrom calling opened (if not nil) once the
// stream's handshake is over, whatever its outcome.
func (s *Server) serveStreamThen(ctx context.Context, c meshStream, pre []byte, pc *peerCount, opened func()) {
	defer s.wg.Done()
	defer s.limit.release(pc)
	s.active.Add(1)
	defer s.active.Add(-1)
	defer c.Close()

	local, h, err := s.open(ctx, c, pre)
	if opened != nil {
		opened()
	}
	if err != nil {
		s.log.Debug("mesh: stream refused", "peer", c.RemoteAddr().String(), "err", err)
		if sc, ok := c.(*streamConn); ok {
			c.Close()
			s.drainRefused(sc)
		}
		return
	}
	if r, ok := s.cfg.Dialer.(StreamRelayer); ok {
		r.RelayStream(ctx, h, c, local)
		return
	}
	if _, _, err := proxy.Relay(ctx, c, local); err != nil && ctx.Err() == nil {
		s.log.Debug("mesh: relay", "peer", c.RemoteAddr().String(), "dest", h.String(), "err", err)
	}
}

// open runs the server side of the stream handshake: header in, local dial,
// status out. It returns the local conn after StatusOK was sent.
func (s *Server) open(ctx context.Context, c meshStream, pre []byte) (net.Conn, Header, error) {
	deadline := time.Now().Add(s.cfg.HeaderTimeout)
	c.SetReadDeadline(deadline)
	c.SetWriteDeadline(deadline)
	var r io.Reader = c
	if len(pre) > 0 {
		r = io.MultiReader(bytes.NewReader(pre), c)
	}
	h, err := ReadHeader(r)
	if err != nil {
		s.m.bad.Inc()
		s.m.streams[resultRefused].Inc()
		// A header that timed out also expired the write deadline, and a
		// QUIC stream (unlike yamux) fails any write past it.
		c.SetWriteDeadline(time.Now().Add(s.cfg.HeaderTimeout))
		WriteStatus(c, StatusBadHeader, err.Error())
		return nil, h, err
	}
	if err := s.checkSource(ctx, h); err != nil {
		s.m.streams[resultRefused].Inc()
		WriteStatus(c, StatusRefused, err.Error())
		return nil, h, err
	}

	dctx, cancel := context.WithTimeout(ctx, s.cfg.DialTimeout)
	local, err := s.cfg.Dialer.DialLocal(dctx, h)
	cancel()
	if err != nil {
		code := StatusDialFailed
		switch {
		case errors.Is(err, ErrUnknownDestination):
			code = StatusRefused
		case errors.Is(err, ErrDenied):
			code = StatusDenied
		}
		s.m.streams[resultOf(code)].Inc()
		c.SetWriteDeadline(time.Now().Add(s.cfg.HeaderTimeout))
		WriteStatus(c, code, err.Error())
		return nil, h, fmt.Errorf("%s: %w", h, err)
	}

	c.SetWriteDeadline(time.Now().Add(s.cfg.HeaderTimeout))
	if err := WriteStatus(c, StatusOK, ""); err != nil {
		local.Close()
		s.m.streams[resultError].Inc()
		return nil, h, fmt.Errorf("%s: %w", h, err)
	}
	c.SetDeadline(time.Time{})
	s.m.streams[resultOK].Inc()
	return local, h, nil
}
