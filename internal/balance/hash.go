package balance

import (
	"hash/fnv"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
)

// Rendezvous reorders each run of equal tier of eps (as Pick returned
// them) by rendezvous (highest random weight) hashing of key, so a key
// keeps its endpoint while that endpoint is usable, and only the keys of a
// vanished endpoint move.
func Rendezvous(eps []Endpoint, key string) {
	type scored struct {
		e     Endpoint
		score uint64
	}
	var s []scored
	runs(eps, func(run []Endpoint) {
		if len(run) < 2 {
			return
		}
		s = s[:0]
		for _, e := range run {
			h := fnv.New64a()
			h.Write([]byte(key))
			h.Write([]byte{0})
			h.Write([]byte(e.Key()))
			s = append(s, scored{e, fmix64(h.Sum64())})
		}
		sort.SliceStable(s, func(i, j int) bool { return s[i].score > s[j].score })
		for i := range s {
			run[i] = s[i].e
		}
	})
}

// Maglev consistent hashing (Eisenbud et al., NSDI 2016): every endpoint
// fills a lookup table of MaglevSize slots in the order of its own
// permutation, round by round, so each gets ⌊M/N⌋ or ⌈M/N⌉ slots, and a
// key maps to table[hash(key) mod M]. Removing one of N endpoints remaps
// about 1/N of the keys, like rendezvous hashing, but a lookup is O(1)
// instead of O(N) hashes.

// MaglevSize is the table size M: a prime, so every skip in [1, M-1]
// walks all slots (Envoy's default too).
const MaglevSize = 65537

// maglevCacheMax bounds the tables a MaglevCache keeps (one per set of
// usable endpoints seen); past it, tables are built per request, which
// costs ~1 ms.
const maglevCacheMax = 8

// MaglevCache keeps lookup tables by endpoint set. The zero value is
// ready; safe for concurrent use. The agent keeps one per service view.
type MaglevCache struct {
	tables sync.Map // joined sorted keys -> []int32
	n      atomic.Int64
}

// table returns the (cached) table of a set of endpoint keys, which must
// be sorted.
func (c *MaglevCache) table(keys []string) []int32 {
	id := strings.Join(keys, "\x00")
	if t, ok := c.tables.Load(id); ok {
		return t.([]int32)
	}
	t := BuildMaglev(keys)
	if c.n.Add(1) <= maglevCacheMax {
		c.tables.Store(id, t)
	}
	return t
}

// Maglev puts first in each run of equal tier of eps the endpoint key maps
// to by Maglev; the others follow in rendezvous order as failover
// candidates.
func Maglev(c *MaglevCache, eps []Endpoint, key string) {
	Rendezvous(eps, key)
	runs(eps, func(run []Endpoint) {
		keys := make([]string, len(run))
		for i, e := range run {
			keys[i] = e.Key()
		}
		sort.Strings(keys)
		want := keys[c.table(keys)[MaglevSlot(key)]]
		for i, e := range run {
			if e.Key() == want {
				copy(run[1:i+1], run[:i])
				run[0] = e
				break
			}
		}
	})
}

// MaglevSlot is the table slot of key.
func MaglevSlot(key string) uint64 { return hash64(0, key) % MaglevSize }

// BuildMaglev returns the lookup table for backends (indexes into names).
func BuildMaglev(names []string) []int32 {
	n := len(names)
	if n == 0 {
		return nil
	}
	table := make([]int32, MaglevSize)
	for i := range table {
		table[i] = -1
	}
	offset, skip, next := make([]uint64, n), make([]uint64, n), make([]uint64, n)
	for i, name := range names {
		offset[i] = hash64(1, name) % MaglevSize
		skip[i] = hash64(2, name)%(MaglevSize-1) + 1
	}
	for filled := 0; ; {
		for i := range n {
			c := (offset[i] + next[i]*skip[i]) % MaglevSize
			for table[c] >= 0 {
				next[i]++
				c = (offset[i] + next[i]*skip[i]) % MaglevSize
			}
			table[c] = int32(i)
			next[i]++
			if filled++; filled == MaglevSize {
				return table
			}
		}
	}
}

func hash64(seed byte, s string) uint64 {
	h := fnv.New64a()
	h.Write([]byte{seed})
	h.Write([]byte(s))
	return fmix64(h.Sum64())
}

// fmix64 is MurmurHash3's finalizer. FNV-1a alone barely mixes its last
// bytes into the high bits, so endpoint names that differ only at the end
// ("ep-1", "ep-2") got scores ordered alike for most keys: with 10 such
// endpoints rendezvous hashing gave some 6% of keys instead of 10%.
func fmix64(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}
