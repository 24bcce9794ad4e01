// The configuration cache file: what the agent serves from when it starts
// without a control plane.

package agent

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"

	"github.com/fogmesh/fogmesh/internal/atomicfile"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// writeFileAtomic writes data to path, mode 0600, so that a crash leaves
// either the old or the new file, never a torn one.
func writeFileAtomic(path string, data []byte) error {
	return atomicfile.Write(path, data, 0o600)
}

func saveJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", " ")
	if err != nil {
		return err
	}
	return writeFileAtomic(path, b)
}

// saveConfig writes the cache file. The resources' bodies are copied as
// they are (each was decoded and validated when it arrived), not
// re-validated and indented as json.MarshalIndent would: the file is
// rewritten at every update, so its cost is a copy of the bytes.
func saveConfig(path string, c *config) error {
	head, err := json.Marshal(struct {
		StoreID string `json:"storeId"`
		Version uint64 `json:"version"`
	}{c.StoreID, c.Version})
	if err != nil {
		return err
	}
	size := len(head) + 16
	for _, r := range c.Resources {
		size += len(r.Body) + len(r.Type) + len(r.Name) + 64
	}
	b := make([]byte, 0, size)
	b = append(b, head[:len(head)-1]...)
	b = append(b, `,"resources":[`...)
	for i, r := range c.Resources {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '\n')
		ref, err := json.Marshal(r.ResourceRef)
		if err != nil {
			return err
		}
		b = append(b, ref[:len(ref)-1]...)
		b = append(b, `,"version":`...)
		b = strconv.AppendUint(b, r.Version, 10)
		b = append(b, `,"body":`...)
		if len(r.Body) == 0 {
			b = append(b, "null"...)
		} else {
			b = append(b, r.Body...)
		}
		b = append(b, '}')
	}
	b = append(b, "]}\n"...)
	return writeFileAtomic(path, b)
}

// loadCache reads the cache file. A missing file is not an error.
func loadCache(path string) (*config, *resources, error) {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return &config{}, newResources(), nil
	}
	if err != nil {
		return nil, nil, err
	}
	var c config
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, nil, fmt.Errorf("cache %s: %w", path, err)
	}
	r, err := newResources().applyUpdate(&wire.Message{Full: true, Resources: c.Resources})
	if err != nil {
		return nil, nil, fmt.Errorf("cache %s: %w", path, err)
	}
	return &c, r, nil
}
