package identity

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"strings"
)

// Token kinds.
const (
	// TokenJoin is a one-time, expiring token bound to a site that lets a
	// new node get its certificate.
	TokenJoin = "join"
	// TokenRelay is a one-time, expiring token that lets a relay (fogmesh
	// relay) get its relay certificate. It is a kind of its own, with a
	// prefix of its own, so that an agent's join token never mints a relay
	// identity and a relay's never mints a node.
	TokenRelay = "relay"
	// TokenAdmin is a bearer token for the admin API with a role.
	TokenAdmin = "admin"
	// TokenRegion is a one-time, expiring token bound to a region that
	// lets a regional control plane get its intermediate CA and client
	// certificate from the global one (fogmesh control --mode regional).
	TokenRegion = "region"
)

// Token wire forms:
//
//	join   fmj1.<id>.<secret>.<pin>
//	relay  fmr1.<id>.<secret>.<pin>
//	region fmg1.<id>.<secret>.<pin>
//	admin  fma1.<id>.<secret>
//
// id is 12 lowercase hex digits (public: it names the token in the store
// and in logs), secret 32 lowercase hex digits (128 random bits; the store
// keeps only its hash), pin 64 lowercase hex digits: the SHA-256 of the
// control plane root's SubjectPublicKeyInfo (see Pin), with which a joining
// agent authenticates the control plane without any pre-shared file, as
// kubeadm's discovery hash does.
const (
	joinPrefix   = "fmj1"
	relayPrefix  = "fmr1"
	regionPrefix = "fmg1"
	adminPrefix  = "fma1"
	idLen        = 12
	secretLen    = 32
	pinLen       = 64
	// MaxTokenLen bounds a token string.
	MaxTokenLen = 128
)

// Token is a parsed token.
type Token struct {
	Kind   string // TokenJoin, TokenRelay, TokenRegion or TokenAdmin
	ID     string
	Secret string
	Pin    string // join and relay tokens only
}

// NewToken makes a random token of kind; pin is required for join, relay
// and region tokens.
func NewToken(kind, pin string) (Token, error) {
	var b [idLen/2 + secretLen/2]byte
	if _, err := rand.Read(b[:]); err != nil {
		return Token{}, fmt.Errorf("identity: token: %w", err)
	}
	t := Token{Kind: kind, ID: hex.EncodeToString(b[:idLen/2]), Secret: hex.EncodeToString(b[idLen/2:])}
	switch kind {
	case TokenJoin, TokenRelay, TokenRegion:
		if !isHex(pin, pinLen) {
			return Token{}, fmt.Errorf("identity: %s token needs a root pin", kind)
		}
		t.Pin = pin
	case TokenAdmin:
	default:
		return Token{}, fmt.Errorf("identity: unknown token kind %q", kind)
	}
	return t, nil
}

// String returns the token's wire form.
func (t Token) String() string {
	switch t.Kind {
	case TokenJoin:
		return joinPrefix + "." + t.ID + "." + t.Secret + "." + t.Pin
	case TokenRelay:
		return relayPrefix + "." + t.ID + "." + t.Secret + "." + t.Pin
	case TokenRegion:
		return regionPrefix + "." + t.ID + "." + t.Secret + "." + t.Pin
	}
	return adminPrefix + "." + t.ID + "." + t.Secret
}

// Hash is what the store keeps of a token: the secret never is.
func (t Token) Hash() string {
	sum := sha256.Sum256([]byte("fogmesh-token\x00" + t.Kind + "\x00" + t.ID + "\x00" + t.Secret))
	return hex.EncodeToString(sum[:])
}

// MatchesHash reports in constant time whether t hashes to h.
func (t Token) MatchesHash(h string) bool {
	return subtle.ConstantTimeCompare([]byte(t.Hash()), []byte(h)) == 1
}

// ParseToken parses a token's wire form. Errors wrap ErrBadToken and never
// echo the secret.
func ParseToken(s string) (Token, error) {
	s = strings.TrimSpace(s)
	if len(s) > MaxTokenLen {
		return Token{}, fmt.Errorf("%w: %d characters, max %d", ErrBadToken, len(s), MaxTokenLen)
	}
	parts := strings.Split(s, ".")
	var t Token
	switch {
	case len(parts) == 4 && (parts[0] == joinPrefix || parts[0] == relayPrefix || parts[0] == regionPrefix):
		t = Token{Kind: TokenJoin, ID: parts[1], Secret: parts[2], Pin: parts[3]}
		switch parts[0] {
		case relayPrefix:
			t.Kind = TokenRelay
		case regionPrefix:
			t.Kind = TokenRegion
		}
		if !isHex(t.Pin, pinLen) {
			return Token{}, fmt.Errorf("%w: the root pin is not %d hex digits", ErrBadToken, pinLen)
		}
	case len(parts) == 3 && parts[0] == adminPrefix:
		t = Token{Kind: TokenAdmin, ID: parts[1], Secret: parts[2]}
	default:
		return Token{}, fmt.Errorf("%w: want %s|%s|%s.<id>.<secret>.<pin> or %s.<id>.<secret>", ErrBadToken, joinPrefix, relayPrefix, regionPrefix, adminPrefix)
	}
	if !isHex(t.ID, idLen) || !isHex(t.Secret, secretLen) {
		return Token{}, fmt.Errorf("%w: malformed id or secret", ErrBadToken)
	}
	return t, nil
}

// ValidTokenID reports whether id has the form of a token id.
func ValidTokenID(id string) bool { return isHex(id, idLen) }

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}
