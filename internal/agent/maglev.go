package agent

import (
	"hash/fnv"
	"sort"
	"strings"
)

// Maglev consistent hashing (Eisenbud et al., NSDI 2016): every endpoint
// fills a lookup table of maglevSize slots in the order of its own
// permutation, round by round, so each gets ⌊M/N⌋ or ⌈M/N⌉ slots, and a
// key maps to table[hash(key) mod M]. Removing one of N endpoints remaps
// about 1/N of the keys, like rendezvous hashing (balancer
// consistent-hash), but a lookup is O(1) instead of O(N) hashes.

// maglevSize is the table size M: a prime, so every skip in [1, M-1]
// walks all slots (Envoy's default too).
const maglevSize = 65537

// maglevCacheMax bounds the tables a service view caches (one per set of
// healthy endpoints seen since the view was built); past it, tables are
// built per request, which costs ~1 ms.
const maglevCacheMax = 8

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

// buildMaglev returns the lookup table for backends (indexes into names).
func buildMaglev(names []string) []int32 {
	n := len(names)
	table := make([]int32, maglevSize)
	if n == 0 {
		return nil
	}
	for i := range table {
		table[i] = -1
	}
	offset, skip, next := make([]uint64, n), make([]uint64, n), make([]uint64, n)
	for i, name := range names {
		offset[i] = hash64(1, name) % maglevSize
		skip[i] = hash64(2, name)%(maglevSize-1) + 1
	}
	for filled := 0; ; {
		for i := range n {
			c := (offset[i] + next[i]*skip[i]) % maglevSize
			for table[c] >= 0 {
				next[i]++
				c = (offset[i] + next[i]*skip[i]) % maglevSize
			}
			table[c] = int32(i)
			next[i]++
			if filled++; filled == maglevSize {
				return table
			}
		}
	}
}

// maglevTable returns the (cached) table of a set of endpoint keys, which
// must be sorted.
func (sv *serviceView) maglevTable(keys []string) []int32 {
	id := strings.Join(keys, "\x00")
	if t, ok := sv.maglev.Load(id); ok {
		return t.([]int32)
	}
	t := buildMaglev(keys)
	if sv.maglevN.Add(1) <= maglevCacheMax {
		sv.maglev.Store(id, t)
	}
	return t
}

// maglevOrder puts first in each locality tier of cands the endpoint the
// key maps to by Maglev; the others follow in rendezvous order as
// failover candidates.
func maglevOrder(sv *serviceView, cands []*endpointView, key string) {
	pinOrder(cands, key)
	for start := 0; start < len(cands); {
		end := start + 1
		for end < len(cands) && cands[end].tier == cands[start].tier {
			end++
		}
		run := cands[start:end]
		keys := make([]string, len(run))
		for i, ev := range run {
			keys[i] = ev.key
		}
		sort.Strings(keys)
		want := keys[sv.maglevTable(keys)[hash64(0, key)%maglevSize]]
		for i, ev := range run {
			if ev.key == want {
				copy(run[1:i+1], run[:i])
				run[0] = ev
				break
			}
		}
		start = end
	}
}

// hashBalanced reports whether the service's balancer hashes HashKey.
func hashBalanced(sv *serviceView) bool {
	b := sv.svc.Spec.Balancer
	return sv.svc.Spec.HashKey != nil && (b == "consistent-hash" || b == "maglev")
}

// hashOrder orders cands by key with the service's hashing balancer
// (rendezvous for consistent-hash and for pinning without a hash
// balancer, Maglev for maglev).
func hashOrder(sv *serviceView, cands []*endpointView, key string) {
	if sv.svc.Spec.Balancer == "maglev" {
		maglevOrder(sv, cands, key)
		return
	}
	pinOrder(cands, key)
}
