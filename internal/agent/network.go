package agent

import (
	"context"
	"crypto/tls"
	"net"
	"time"

	"github.com/fogmesh/fogmesh/internal/enroll"
)

// controlDialTimeout bounds the connect of a dial to a control plane.
const controlDialTimeout = 3 * time.Second

// dialControl connects to a control plane's sync port over Config.Network
// (TCP by default, with the kernel's keep-alive every 15 s).
func (a *Agent) dialControl(ctx context.Context, addr string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, controlDialTimeout)
	defer cancel()
	return a.cfg.Network.Dial(ctx, "tcp", addr)
}

// dialControlTLS is dialControl and a TLS handshake within ctx, as
// tls.Dialer does it (the server name, when cfg has none, is addr's host).
func (a *Agent) dialControlTLS(ctx context.Context, addr string, cfg *tls.Config) (*tls.Conn, error) {
	raw, err := a.dialControl(ctx, addr)
	if err != nil {
		return nil, err
	}
	return enroll.HandshakeTLS(ctx, raw, addr, cfg)
}
