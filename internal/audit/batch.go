package audit

import (
	"encoding/json"
	"fmt"
)

// EncodeBatch encodes records for the sync protocol, which carries each as
// an opaque JSON object (wire.Message.Audit) so that the protocol's frames
// do not depend on this package.
func EncodeBatch(recs []Record) ([]json.RawMessage, error) {
	out := make([]json.RawMessage, len(recs))
	for i := range recs {
		b, err := json.Marshal(&recs[i])
		if err != nil {
			return nil, fmt.Errorf("audit: encode record %d: %w", recs[i].Seq, err)
		}
		out[i] = b
	}
	return out, nil
}

// DecodeBatch decodes what EncodeBatch made, as received from a node: a
// record that is not a JSON object of this shape makes the whole batch
// invalid (ErrInvalid), so nothing of it is stored.
func DecodeBatch(raw []json.RawMessage) ([]Record, error) {
	recs := make([]Record, len(raw))
	for i, b := range raw {
		if err := json.Unmarshal(b, &recs[i]); err != nil {
			return nil, fmt.Errorf("%w: record %d of the batch: %v", ErrInvalid, i, err)
		}
	}
	return recs, nil
}
