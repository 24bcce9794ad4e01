package audit

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"testing"
	"time"
)

// replicaPool is the records FuzzReplicaAppend builds batches of: a node's
// chain of 12 (signed checkpoints among them), a damage marker for seqs
// 5..7, and forgeries of each kind Append must refuse.
func replicaPool(f *testing.F) (pool []Record, pub any) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	l := openLog(f, f.TempDir(), func(c *Config) { c.Signer = key; c.CheckpointEvery = 4; c.NoSync = true })
	for i := range 10 {
		if err := l.Append(authz(i)); err != nil {
			f.Fatal(err)
		}
	}
	if err := l.Flush(context.Background()); err != nil {
		f.Fatal(err)
	}
	recs, err := l.ReadFrom(1, 100)
	if err != nil || len(recs) < 12 {
		f.Fatalf("%d records, %v", len(recs), err)
	}
	pool = append(pool, recs...)
	mk, err := l.DamageMarker(&DamageError{From: 5, To: 7}, recs[3].Hash)
	if err != nil {
		f.Fatal(err)
	}
	pool = append(pool, mk)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	forged := mk
	forged.Sig, _ = sign(other, mk.Hash) // signed by another key
	pool = append(pool, forged)
	unsigned := mk
	unsigned.Sig = ""
	pool = append(pool, unsigned)
	edited := recs[5]
	edited.Object = "shop/orderz" // content no longer matches its hash
	pool = append(pool, edited)
	rehashed := recs[5]
	rehashed.Object, rehashed.Prev = "shop/orderz", recs[3].Hash // rehashed, chained to the wrong record
	rehashed.Hash, _ = rehashed.ComputeHash()
	pool = append(pool, rehashed)
	stranger := recs[0]
	stranger.Node = "edge-2"
	stranger.Hash, _ = stranger.ComputeHash()
	pool = append(pool, stranger)
	local := recs[1]
	local.Time = local.Time.In(time.FixedZone("x", 3600)) // does not re-encode as it hashes
	pool = append(pool, local)
	return pool, key.Public()
}

// FuzzReplicaAppend: whatever batches a node sends (records picked from a
// pool of its chain, a damage marker and forgeries, then a batch decoded
// from raw JSON as the sync protocol carries it), the replica takes each
// batch all or none, holds only a chain that verifies (no problem but the
// damage its markers declare) up to the head it reports, and reopens at
// that head.
func FuzzReplicaAppend(f *testing.F) {
	pool, pub := replicaPool(f)
	raw, _ := EncodeBatch(pool[:3])
	valid, _ := json.Marshal(raw)
	f.Add([]byte{0, 1, 2, 3, 0xff, 4, 5, 6, 7, 8, 9, 10, 11}, valid)
	f.Add([]byte{0, 1, 2, 3, 12, 7, 8, 0xff, 11}, []byte("[null]"))
	f.Add([]byte{0, 1, 2, 3, 0xff, 13, 0xff, 14, 0xff, 12, 12, 0xff, 7, 8}, []byte(`[{}]`))
	f.Add([]byte{0, 1, 2, 3, 4, 0xff, 15, 0xff, 16, 0xff, 3, 0xff, 2, 4, 0xff, 17, 0xff, 18}, []byte(`[{"seq":1}]`))
	f.Add([]byte{17, 0xff, 0, 18, 0xff, 0, 1, 0xff, 1, 1, 2, 0xff}, []byte(`not json`))
	f.Add([]byte{1, 0, 0xff, 0, 0, 0xff, 0, 2}, valid)
	f.Fuzz(func(t *testing.T, ops, raw []byte) {
		dir := t.TempDir()
		rp, err := OpenReplica(dir, "edge-1")
		if err != nil {
			t.Fatal(err)
		}
		defer func() { rp.Close() }()
		rp.SetPublicKey(pub)
		var batches [][]Record
		var cur []Record
		for _, b := range ops {
			if b == 0xff {
				batches, cur = append(batches, cur), nil
				continue
			}
			cur = append(cur, pool[int(b)%len(pool)])
		}
		batches = append(batches, cur)
		var msgs []json.RawMessage
		if json.Unmarshal(raw, &msgs) == nil {
			if recs, err := DecodeBatch(msgs); err == nil {
				batches = append(batches, recs)
			}
		}
		for _, batch := range batches {
			seq0, hash0 := rp.Last()
			startErr := CheckStart("edge-1", pub, batch)
			got, err := rp.Append(batch)
			// CheckStart (what a restarted chain must pass) takes a
			// batch exactly when an empty replica takes all of it.
			if seq0 == 0 && (startErr == nil) != (err == nil && (len(batch) == 0 || got == batch[len(batch)-1].Seq)) {
				t.Fatalf("CheckStart: %v, but an empty replica's Append: %d, %v", startErr, got, err)
			}
			seq, hash := rp.Last()
			if got != seq {
				t.Fatalf("Append returned seq %d, the replica holds %d", got, seq)
			}
			if err != nil {
				if !errors.Is(err, ErrGap) && !errors.Is(err, ErrFork) && !errors.Is(err, ErrInvalid) {
					t.Fatalf("Append refused with an error of no known cause: %v", err)
				}
				if seq != seq0 || hash != hash0 {
					t.Fatalf("a refused batch (%v) moved the replica from %d to %d", err, seq0, seq)
				}
			}
			if seq < seq0 {
				t.Fatalf("the replica went back from %d to %d", seq0, seq)
			}
		}
		seq, hash := rp.Last()
		v := Verifier{PublicKey: pub, FromGenesis: true}
		if seq > 0 {
			v.Head = &Head{Seq: seq, Hash: hash}
		}
		rep, err := rp.Verify(v)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range rep.Problems {
			if p.Kind != ProblemDamaged {
				t.Fatalf("the replica holds a chain with a problem: %+v", p)
			}
		}
		if seq > 0 && (rep.LastSeq != seq || rep.LastHash != hash) {
			t.Fatalf("the files end at %d %s, the replica says %d %s", rep.LastSeq, rep.LastHash, seq, hash)
		}
		if seq == 0 && rep.Records != 0 {
			t.Fatalf("an empty replica holds %d records", rep.Records)
		}
		rp.Close()
		if rp, err = OpenReplica(dir, "edge-1"); err != nil {
			t.Fatal(err)
		}
		if s, h := rp.Last(); s != seq || h != hash {
			t.Fatalf("reopened at %d, was at %d", s, seq)
		}
	})
}
