package agent

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/mqtt"
)

// connackFirst on the broker's first packets: the keep alive in force
// after a CONNACK (its Server Keep Alive, else the client's), nothing
// taken for one after an AUTH or bytes it cannot frame (the splice carries
// them), an error for a broker that closes or stays silent; whatever it
// read reaches the client unchanged.
func TestConnackFirst(t *testing.T) {
	cn := mqtt.Connect{Version: 5, Keepalive: 60}
	for _, c := range []struct {
		name   string
		broker []byte // what the broker sends, then it stays open (or closes: closes)
		closes bool
		keep   uint16
		ok     bool
		err    error
	}{
		{"CONNACK with Server Keep Alive", []byte{0x20, 6, 0, 0, 3, 0x13, 0, 10}, false, 10, true, nil},
		{"CONNACK without", []byte{0x20, 3, 0, 0, 0}, false, 60, true, nil},
		{"CONNACK refusing", []byte{0x20, 3, 0, 0x87, 0}, false, 60, true, nil},
		{"AUTH first", []byte{0xf0, 2, 0x18, 0}, false, 0, false, nil},
		{"flags no packet has", []byte{0x2f, 0, 0}, false, 0, false, nil},
		{"closed before a byte", nil, true, 0, false, io.EOF},
		{"closed mid-packet", []byte{0x20, 6, 0, 0}, true, 0, false, io.ErrUnexpectedEOF},
		{"silent", nil, false, 0, false, os.ErrDeadlineExceeded},
	} {
		t.Run(c.name, func(t *testing.T) {
			client, clientEnd := net.Pipe()
			up, broker := net.Pipe()
			defer client.Close()
			defer broker.Close()
			go func() {
				broker.Write(c.broker)
				if c.closes {
					broker.Close()
				}
			}()
			got := make(chan []byte, 1)
			go func() { b, _ := io.ReadAll(client); got <- b }()
			keep, ok, err := connackFirst(context.Background(), clientEnd, up, cn, 300*time.Millisecond)
			clientEnd.Close()
			if keep != c.keep || ok != c.ok || !errors.Is(err, c.err) || (c.err == nil) != (err == nil) {
				t.Fatalf("got %d %v %v, want %d %v %v", keep, ok, err, c.keep, c.ok, c.err)
			}
			want := c.broker
			if c.name == "flags no packet has" {
				want = c.broker[:1] // the first byte; the splice forwards the rest
			}
			if b := <-got; !bytes.Equal(b, want) {
				t.Fatalf("client got % x, want % x", b, want)
			}
		})
	}
}

// An agent shutting down ends a wait for a CONNACK that has no limit.
func TestConnackFirstEndsOnShutdown(t *testing.T) {
	_, clientEnd := net.Pipe()
	up, broker := net.Pipe()
	defer broker.Close()
	defer clientEnd.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, _, err := connackFirst(ctx, clientEnd, up, mqtt.Connect{Version: 5}, 0); done <- err }()
	cancel()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("no error after shutdown")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the wait for a CONNACK outlived the agent's shutdown by 5 s")
	}
}
