package relay

import (
	"bytes"
	"testing"
	"unsafe"

	"github.com/fogmesh/fogmesh/internal/mqtt"
)

// recordWrites records a toClient's writes to its client, telling the
// broker's bytes (slices of broker) from the relay's answers.
type recordWrites struct {
	broker  []byte
	out     []byte
	answers []int  // offsets in broker at which answers were written
	answerB int    // bytes of answers written
	sent    int    // broker bytes written so far
	got     []byte // the broker's bytes as the client got them
}

func (r *recordWrites) Write(p []byte) (int, error) {
	r.out = append(r.out, p...)
	if len(p) > 0 && r.fromBroker(p) {
		r.sent += len(p)
		r.got = append(r.got, p...)
	} else {
		r.answers = append(r.answers, r.sent)
		r.answerB += len(p)
	}
	return len(p), nil
}

func (r *recordWrites) fromBroker(p []byte) bool {
	lo := uintptr(unsafe.Pointer(unsafe.SliceData(r.broker)))
	at := uintptr(unsafe.Pointer(unsafe.SliceData(p)))
	return at >= lo && at < lo+uintptr(len(r.broker))
}

// FuzzToClient: whatever bytes the broker sends, in whatever pieces, the
// client gets all of them, unchanged and in order, and the relay's own
// answers only between two of the broker's packets as mqtt.ReadPacket
// frames them (the reference), never inside one.
func FuzzToClient(f *testing.F) {
	big := pkt(0x30, str("t"), bytes.Repeat([]byte("x"), 300))
	f.Add(append(append([]byte{}, big...), 0xd0, 0, 0x50, 2, 0, 1), []byte{1, 7, 200, 3})
	f.Add([]byte{0x30, 0xff, 0xff, 0xff, 0xff, 0x7f, 0xd0, 0}, []byte{2, 2, 2})
	f.Add([]byte{0xd0, 0, 0xd0, 0, 0xd0}, []byte{1, 1, 1, 1})
	// One byte at a time: an answer is tried after every byte.
	f.Add(append(append([]byte{}, big...), 0xd0, 0, 0x50, 2, 0, 1, 0x30, 0x80, 0x01), make([]byte, 400))
	f.Fuzz(func(t *testing.T, broker, cuts []byte) {
		rec := &recordWrites{broker: broker}
		w := &toClient{c: rec, open: true}
		answer := mqtt.Pubcomp(5, 9)
		rest := broker
		for i := 0; len(rest) > 0; i++ {
			n := len(rest)
			if i < len(cuts) {
				n = min(n, int(cuts[i])+1)
			}
			w.Write(rest[:n])
			rest = rest[n:]
			w.answer(answer)
		}
		if rec.sent != len(broker) || len(rec.out) != rec.sent+rec.answerB || rec.answerB%len(answer) != 0 {
			t.Fatalf("the client got %d bytes: %d of the broker's %d, and %d of answers", len(rec.out), rec.sent, len(broker), rec.answerB)
		}
		if !bytes.Equal(rec.got, broker) {
			t.Fatal("the broker's bytes reached the client changed or out of order")
		}
		// The reference's packet boundaries, up to the first packet it
		// does not read (after it, toClient may frame on or give up).
		bounds := map[int]bool{0: true}
		framed := 0
		for r := bytes.NewReader(broker); r.Len() > 0; {
			_, raw, _, err := mqtt.ReadPacket(r, 1<<30)
			if err != nil {
				break
			}
			framed += len(raw)
			bounds[framed] = true
		}
		for _, at := range rec.answers {
			if at <= framed && !bounds[at] {
				t.Fatalf("an answer after %d bytes of the broker's: inside a packet (boundaries %v)", at, bounds)
			}
		}
	})
}
