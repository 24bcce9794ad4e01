// Package relay relays one MQTT client connection to a broker, reading
// the client's packets one by one so that each topic can be authorized
// and counted; the broker's bytes are copied back as they come. The
// caller passes the decisions in (Relay.Authorize, Relay.Count, Relay.Bad);
// the packet decoding is internal/mqtt's.
//
// Authorization covers every topic a client can make the broker publish to
// or subscribe it to:
//
//   - the will topic of the CONNECT, authorized as a PUBLISH before the
//     broker sees the CONNECT: a denied will is refused with a CONNACK
//     (3.1.1 return code 0x05, MQTT 5 reason 0x87 Not authorized), since
//     the broker publishes a will whenever the connection ends without a
//     DISCONNECT, which the client (or the relay's own deny-and-close)
//     can make happen at will;
//   - each PUBLISH's topic, an MQTT 5 topic alias resolved to the topic it
//     was set to on this connection (an alias never set ends the
//     connection: DISCONNECT 0x82, as mosquitto does);
//   - each SUBSCRIBE filter, a shared subscription $share/{group}/{filter}
//     as the {filter} it receives;
//   - each PUBREL, against the topic of the QoS 2 PUBLISH it releases (a
//     broker may deliver the message only then): denied, it ends the
//     connection (MQTT 5: DISCONNECT 0x87). Relay.Sessions keeps those
//     topics across the connections of a persistent session, whose client
//     sends the PUBREL again on its next connection. A PUBREL whose topic
//     the relay does not know cannot be authorized: see Run.
//
// A denied PUBLISH or SUBSCRIBE is not forwarded and ends the connection
// (closing also covers QoS 0, which has no answer to carry a refusal). The
// broker then publishes the client's will, which was authorized at
// CONNECT: that is plain MQTT (a client can always end its connection
// without DISCONNECT). If the policies changed since and deny the will
// topic now, the relay sends the broker a DISCONNECT (reason 0x00) before
// closing, whoever ends the connection, so the broker discards the will
// (3.1.1 §3.14.4, MQTT 5 §3.14.2.1); an MQTT 5 DISCONNECT 0x04 ("with
// will") is then forwarded as 0x00.
package relay

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/fogmesh/fogmesh/internal/mqtt"
	"github.com/fogmesh/fogmesh/internal/proxy"
)

// Relay holds the decisions of one relayed connection. Its hooks are
// called from the goroutine that runs Run (or ServeConnect) and must not
// block for long: the client's next packet waits.
type Relay struct {
	// Authorize reports whether the client may "publish" to or
	// "subscribe" to topics (nil: everything is allowed).
	Authorize func(kind string, topics []string) bool
	// Count, if set, is called for each topic of a forwarded PUBLISH and
	// each filter of a forwarded SUBSCRIBE (kind "publish" or
	// "subscribe").
	Count func(kind, topic string)
	// Bad, if set, is called for a malformed CONNECT or a malformed or
	// protocol-breaking client packet, before the connection ends.
	Bad func(err error)
	// Expired, if set, is called when the relay ends a connection at its
	// keep alive limit: the client sent nothing, or the broker took none
	// of the client's bytes, for 1.5 times the keep alive.
	Expired func()
	// Sessions, if set (with Authorize), keeps the topics of unreleased
	// QoS 2 messages for the later connections of a persistent session,
	// keyed by Identity and the client id (nil: this connection's only).
	// The relays of an agent share one.
	Sessions *mqtt.Releases
	// Identity is who the client is, as the caller knows it: the workload
	// identity it authenticated ("" if none) and what else sets sessions
	// apart, such as the service.
	Identity string
	// Withheld, if set, is called with the packet id of each PUBREL the
	// relay keeps from the broker and answers itself (see Run).
	Withheld func(packetID uint16)
}

func (r *Relay) bad(err error) {
	if r.Bad != nil {
		r.Bad(err)
	}
}

// WillAllowed authorizes the will topic of a CONNECT as a PUBLISH (a nil
// check allows it).
func WillAllowed(cn mqtt.Connect, check func(kind string, topics []string) bool) bool {
	return !cn.Will || check == nil || check("publish", mqtt.PublishedForms(cn.WillTopic))
}

// ServeConnect serves a connection whose CONNECT has not been read yet
// (the destination agent's mesh stream to its local broker): it reads the
// CONNECT, refuses a bad one or a denied will with a CONNACK (which the
// source agent relays to the client), forwards it and relays the rest
// through Run.
func (r *Relay) ServeConnect(ctx context.Context, stream, local net.Conn) {
	stream.SetReadDeadline(time.Now().Add(10 * time.Second))
	cn, raw, err := mqtt.ReadConnect(stream)
	stream.SetReadDeadline(time.Time{})
	if err != nil {
		r.bad(err)
		if b := mqtt.RefuseConnect(err); b != nil {
			stream.Write(b)
		}
		return
	}
	if !WillAllowed(cn, r.Authorize) {
		stream.Write(mqtt.Connack(cn.Version, mqtt.RefuseNotAuthorized))
		return
	}
	if _, err := local.Write(raw); err != nil {
		return
	}
	r.Run(ctx, stream, local, cn)
}

// Run is the inspecting relay: client packets after the CONNECT cn (which
// the caller has forwarded) are read one by one, checked (mqtt.Session),
// authorized by Authorize when set, PUBLISH and SUBSCRIBE counted per topic
// (when Count is set) and forwarded
// unchanged; the broker's bytes are copied back as they come. A malformed
// or protocol-breaking client packet ends the connection (an MQTT 5 client
// first gets DISCONNECT with the reason: 0x81, 0x82, ...); so does a
// denied one (MQTT 5: DISCONNECT 0x87 Not authorized; MQTT 3.1.1 has no
// way to say why).
//
// A PUBREL whose QoS 2 PUBLISH the relay has no topic of (it came on a
// connection before the agent restarted, or Sessions dropped it at its
// bounds, or a denied PUBREL's retry) is not forwarded: the broker could
// deliver a message on any topic. The relay answers it itself with a
// PUBCOMP, MQTT 5 reason 0x92 Packet Identifier not found (MQTT 3.1.1: a
// plain PUBCOMP), and calls Withheld. Ending the connection instead would
// not help the client: it must send that PUBREL again on each new
// connection of its session until it gets a PUBCOMP. The broker keeps the
// message unreleased until the session ends; the client takes it as
// delivered (3.1.1) or not found (MQTT 5).
//
// The keep alive is enforced as a broker does (MQTT 3.1.1 and 5
// §3.1.2.10): a client that sends nothing for 1.5 times its keep alive
// (the CONNECT's, or the Server Keep Alive of an MQTT 5 CONNACK) is
// disconnected (MQTT 5: DISCONNECT 0x8D Keep Alive timeout), and so is one
// whose broker takes none of its bytes for as long; a client that
// vanished does not hold the relay and its broker connection while the
// broker hangs or its path is down. Keep alive 0 turns this off.
//
// When the relay ends a connection, the broker's side is closed first,
// then the client hears of it: a client that has seen its connection end
// knows the broker has too (and has published its will, if it does).
// Run returns when either side ends, with both closed.
func (r *Relay) Run(ctx context.Context, client, up net.Conn, cn mqtt.Connect) {
	check := r.Authorize
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	connacked := make(chan struct{})
	keep := &keepAlive{client: client, up: up, limit: mqtt.KeepAliveLimit(cn.Keepalive)}
	out := &toClient{c: client}
	// Ended by the broker, the agent or the idle timeout: the client is
	// closed, the broker's side only stopped, so that closeRelay can still
	// keep the broker from publishing a will denied by now.
	aborted := make(chan struct{})
	stop := context.AfterFunc(ctx, func() { defer close(aborted); client.Close(); keep.abort() })
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // brokerToClient
		defer wg.Done()
		defer cancel()
		relayUntilConnack(out, up, connacked, keep)
		io.Copy(out, up)
	}()
	var reason byte // the DISCONNECT reason for an MQTT 5 client, 0 for none
	defer func() {  // closeRelay
		defer wg.Wait()
		if !stop() {
			<-aborted
			reason = 0 // the client is closed
		}
		if reason != 0 {
			// Not before the broker's CONNACK: the client must get it first.
			t := time.NewTimer(2 * time.Second)
			select {
			case <-connacked:
			case <-t.C:
				reason = 0
			}
			t.Stop()
		}
		// The connection ends without the client's DISCONNECT reaching the
		// broker: keep the broker from publishing a will denied by now.
		if cn.Will && check != nil && !WillAllowed(cn, check) {
			// After the rest of a packet cut off by the keep alive's write
			// deadline (else the broker would read the DISCONNECT as part
			// of it), under a deadline of its own.
			up.SetWriteDeadline(time.Now().Add(2 * time.Second))
			up.Write(append(keep.unsent, mqtt.TypeDisconnect<<4, 0))
		}
		up.Close()
		if reason != 0 && cn.Version == 5 {
			client.SetWriteDeadline(time.Now().Add(2 * time.Second))
			wg.Wait() // the broker's last bytes are written: do not split a packet
			client.Write(mqtt.Disconnect(reason))
		}
		client.Close()
	}()
	sess := mqtt.Session{Version: cn.Version}
	if check != nil && r.Sessions != nil {
		sess.Resume(r.Sessions, r.Identity, cn)
	}
	in := bufio.NewReader(keep) // the relay reads the client to the end: buffering is safe
	for {
		h, raw, body, err := mqtt.ReadPacket(in, mqtt.MaxPacketSize)
		if err != nil {
			if isTimeout(err) && ctx.Err() == nil {
				r.expired()
				reason = 0x8d // keep alive timeout
				return
			}
			if err != io.EOF && ctx.Err() == nil && !errors.Is(err, proxy.ErrIdle) {
				r.bad(err)
				if len(raw) > 0 {
					reason = mqtt.DisconnectReason(err)
				}
			}
			return
		}
		act, err := sess.Inspect(h, body)
		if err != nil {
			r.bad(err)
			reason = mqtt.DisconnectReason(err)
			return
		}
		kind := ""
		switch act.Kind {
		case mqtt.KindPublish:
			kind = "publish"
		case mqtt.KindSubscribe:
			kind = "subscribe"
		case mqtt.KindRelease:
			// The broker may deliver a QoS 2 message only at its PUBREL:
			// its topic must still be allowed then.
			if check != nil && !check("publish", act.Topics) {
				reason = 0x87 // not authorized
				return
			}
		case mqtt.KindUnknownRelease:
			if check != nil {
				if r.Withheld != nil {
					r.Withheld(act.PacketID)
				}
				out.answer(mqtt.Pubcomp(cn.Version, act.PacketID))
				continue
			}
		case mqtt.KindDisconnect:
			if cn.Will && check != nil && !WillAllowed(cn, check) {
				// Normal disconnection, which the broker cannot refuse: the
				// will is discarded. Not only for a v5 "disconnect with
				// will": a DISCONNECT this package reads as well-formed may
				// still be one the broker refuses (a session expiry the
				// CONNECT did not allow, a reason string with control
				// characters), and it then publishes the will.
				raw = []byte{mqtt.TypeDisconnect << 4, 0}
			}
			cn.Will = false // the broker has its answer; nothing to keep from it
		}
		if kind != "" && check != nil && !check(kind, act.Topics) {
			reason = 0x87 // not authorized
			return
		}
		if r.Count != nil && kind != "" {
			counted := act.Topics[:1] // a PUBLISH as the topic it is delivered to
			if act.Kind == mqtt.KindSubscribe {
				counted = act.Filters
			}
			for _, topic := range counted {
				r.Count(kind, topic)
			}
		}
		if err := keep.write(raw); err != nil {
			if isTimeout(err) && ctx.Err() == nil {
				r.expired()
			}
			return
		}
	}
}

// keepAlive enforces a relayed connection's keep alive limit (0: none):
// it reads the client, each read waiting at most the limit, and writes to
// the broker, in pieces that each must leave within the limit. So a large
// packet that keeps moving is not cut off, and a silent client or a
// broker that takes nothing is. The limit changes once, when the broker's
// CONNACK carries a Server Keep Alive; mu orders that change against the
// deadlines being set, so that an older limit never overwrites it.
type keepAlive struct {
	client, up net.Conn

	mu    sync.Mutex
	limit time.Duration

	unsent []byte // what write left of a packet it could not finish (the relay's goroutine only)

	aborted bool // abort was called: deadlines are no longer set
}

// abort stops the reads and writes of the relay for good: the client's and
// the broker's reads and the writes to the broker fail at once.
func (k *keepAlive) abort() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.aborted = true
	past := time.Unix(1, 0)
	k.client.SetReadDeadline(past)
	k.up.SetReadDeadline(past)
	k.up.SetWriteDeadline(past)
}

// writePiece is how much of a packet goes to the broker under one deadline.
const writePiece = 64 << 10

func (k *keepAlive) Read(p []byte) (int, error) {
	k.mu.Lock()
	if k.limit > 0 && !k.aborted {
		k.client.SetReadDeadline(time.Now().Add(k.limit))
	}
	k.mu.Unlock()
	return k.client.Read(p)
}

func (k *keepAlive) write(b []byte) error {
	for len(b) > 0 {
		n := min(len(b), writePiece)
		k.mu.Lock()
		if k.limit > 0 && !k.aborted {
			k.up.SetWriteDeadline(time.Now().Add(k.limit))
		}
		k.mu.Unlock()
		if m, err := k.up.Write(b[:n]); err != nil {
			k.unsent = b[m:]
			return err
		}
		b = b[n:]
	}
	return nil
}

// set makes limit the keep alive limit, also for a read or write waiting
// now.
func (k *keepAlive) set(limit time.Duration) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.limit = limit
	if k.aborted {
		return
	}
	if limit > 0 {
		k.client.SetReadDeadline(time.Now().Add(limit))
		k.up.SetWriteDeadline(time.Now().Add(limit))
		return
	}
	k.client.SetReadDeadline(time.Time{})
	k.up.SetWriteDeadline(time.Time{})
}

func (r *Relay) expired() {
	if r.Expired != nil {
		r.Expired()
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// relayUntilConnack copies the broker's packets to the client up to and
// including its CONNACK (MQTT 5 AUTH packets may come first), makes the
// CONNACK's Server Keep Alive keep's limit if it has one, lets the relay's
// own answers follow, then closes connacked. Bytes it cannot frame are
// copied as they are.
func relayUntilConnack(client *toClient, up net.Conn, connacked chan struct{}, keep *keepAlive) {
	defer close(connacked)
	for i := 0; i < 64; i++ { // an authentication exchange is a few packets
		h, raw, body, err := mqtt.ReadPacket(up, mqtt.MaxPacketSize)
		if err == nil && h.Type == mqtt.TypeConnack {
			if secs, ok := mqtt.ServerKeepAlive(body); ok {
				keep.set(mqtt.KeepAliveLimit(secs))
			}
		}
		if len(raw) > 0 {
			if _, werr := client.Write(raw); werr != nil {
				return
			}
		}
		if err == nil && h.Type == mqtt.TypeConnack {
			client.connacked()
		}
		if err != nil || h.Type == mqtt.TypeConnack {
			return
		}
	}
}
