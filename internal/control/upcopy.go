// A regional control plane's record of what it holds of the global one
// (the upstream's store ID, the version last applied and the inventory of
// replicas with their upstream versions), kept in a side file so that a
// restarted regional plane resubscribes with it and gets a delta, not a
// snapshot. The replicas themselves are in the store, which is durable:
// a region restarted while cut off serves them as before.

package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/fogmesh/fogmesh/internal/atomicfile"
	"github.com/fogmesh/fogmesh/internal/syncproto"
)

const (
	// upCopyFile is the side file, in the state directory.
	upCopyFile = "upstream-copy.json"
	// maxUpCopy bounds the inventory kept on disk (and read back): a
	// larger one is not written, and the next start takes a snapshot.
	maxUpCopy = 1 << 20
	// upCopyEvery is the least time between two writes: the file follows
	// the link at most this far behind, which is safe (loadUpCopy).
	upCopyEvery = 250 * time.Millisecond
)

// upCopy is the side file's content.
type upCopy struct {
	StoreID string            `json:"storeId"`
	Applied uint64            `json:"applied"`
	Held    map[string]uint64 `json:"held"`
}

// decodeUpCopy parses and checks a side file: a store ID, a version, and
// at most maxUpCopy entries, each a store key of a replicated kind.
func decodeUpCopy(b []byte) (*upCopy, error) {
	var c upCopy
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	if c.StoreID == "" || c.Applied == 0 {
		return nil, errors.New("no upstream store or version")
	}
	if len(c.Held) > maxUpCopy {
		return nil, fmt.Errorf("%d entries, more than %d", len(c.Held), maxUpCopy)
	}
	for k := range c.Held {
		kind, name, _ := strings.Cut(k, "/")
		if !slices.Contains(syncproto.AllTypes, kind) || name == "" || len(name) > maxRefName {
			return nil, fmt.Errorf("entry %q is not a replicated object's key", k)
		}
	}
	return &c, nil
}

// loadUpCopy reads the side file into u, if there is a usable one, and
// makes its inventory name exactly the replicas the store holds: a key
// the store lacks is dropped (the upstream sends it again if it is in the
// view), and a replica the file does not name is held at version 0 (the
// upstream sends it again, or its removal). So a file older than the
// store (written behind it, or a store restored) costs resends, never a
// replica left behind or one missed. A bad file is logged and ignored:
// the first update is a snapshot, as without one.
func (u *upLink) loadUpCopy() {
	s := u.s
	b, err := os.ReadFile(u.copyPath)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	var c *upCopy
	if err == nil {
		c, err = decodeUpCopy(b)
	}
	if err != nil {
		s.log.Warn("control: upstream copy unusable; the first update from upstream will be a snapshot", "file", u.copyPath, "err", err)
		return
	}
	kvs, _, err := s.st.List("")
	if err != nil {
		s.log.Warn("control: upstream copy: cannot read the store; the first update from upstream will be a snapshot", "err", err)
		return
	}
	held := make(map[string]uint64, len(c.Held))
	for _, kv := range kvs {
		kind, _, _ := strings.Cut(kv.Key, "/")
		if !replicated(kind) || ownerOf(kv) == u.region {
			continue
		}
		held[kv.Key] = c.Held[kv.Key] // 0 if the file does not name it
	}
	u.mu.Lock()
	u.storeID, u.applied, u.held = c.StoreID, c.Applied, held
	u.mu.Unlock()
	s.log.Info("control: upstream copy loaded", "store", c.StoreID, "version", c.Applied, "objects", len(held))
}

// noteCopy asks persistCopy to write the side file.
func (u *upLink) noteCopy() {
	select {
	case u.copySig <- struct{}{}:
	default:
	}
}

// persistCopy writes the side file after changes, at most every
// upCopyEvery, and once more when ctx ends.
func (u *upLink) persistCopy(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			select {
			case <-u.copySig:
				u.writeCopy()
			default:
			}
			return
		case <-u.copySig:
			u.writeCopy()
		}
		select {
		case <-ctx.Done():
		case <-time.After(upCopyEvery):
		}
	}
}

// writeCopy writes what the link holds now. The maps are never changed
// once published (apply and once replace them), so they are encoded
// outside the lock.
func (u *upLink) writeCopy() {
	u.mu.Lock()
	c := upCopy{StoreID: u.storeID, Applied: u.applied, Held: u.held}
	u.mu.Unlock()
	var err error
	switch {
	case c.StoreID == "" || c.Applied == 0 || len(c.Held) > maxUpCopy:
		// Nothing to resume from (or too much to keep): a snapshot next.
		if err = os.Remove(u.copyPath); errors.Is(err, fs.ErrNotExist) {
			err = nil
		}
	default:
		var b []byte
		if b, err = json.Marshal(&c); err == nil {
			err = atomicfile.Write(u.copyPath, b, 0o600)
		}
	}
	if err != nil {
		u.s.log.Warn("control: cannot write the upstream copy; a restart will take a snapshot", "file", u.copyPath, "err", err)
		return
	}
	u.copyWrites.Add(1)
}

// upCopyPath is the side file of a control plane whose state is in dir.
func upCopyPath(dir string) string { return filepath.Join(dir, upCopyFile) }
