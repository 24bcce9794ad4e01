package identity

import (
	"crypto/rand"
	"fmt"
	"math/big"
)

func randomSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("identity: serial: %w", err)
	}
	return s.Add(s, big.NewInt(1)), nil // never 0
}
