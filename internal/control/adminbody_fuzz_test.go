package control

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/store"
)

// strictly reports whether body is exactly one JSON value that decodes
// into v with no field v does not have: what the admin API's clients
// send (they marshal the request types).
func strictly(body []byte, v any) bool {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if dec.Decode(v) != nil {
		return false
	}
	_, err := dec.Token()
	return errors.Is(err, io.EOF)
}

// FuzzAdminBodies: the JSON bodies of the admin API's security calls
// (POST /v1/tokens, /v1/trust, /v1/admin/certs) never crash a handler nor
// get a 5xx; a body a strict decoder refuses (an unknown field such as a
// misspelt "role", data after the object) is a 400, and a 400 changes
// nothing in the store; what is granted is what was asked: a token of the
// kind (and admin role) requested that authenticates as such, a trust
// domain holding the bundle sent, an admin certificate for the CSR's key
// and the name asked, within the longest lifetime.
func FuzzAdminBodies(f *testing.F) {
	s, err := New(Config{StateDir: f.TempDir(), AdminAddr: "127.0.0.1:0", SyncAddr: "127.0.0.1:0"})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Close() })
	other, err := identity.OpenCA(identity.CAConfig{Dir: f.TempDir(), TrustDomain: "other.example"})
	if err != nil {
		f.Fatal(err)
	}
	bundle := string(identity.EncodeCertificatesPEM(other.Roots()...))
	key, _ := identity.NewKey()
	csr, _ := identity.NewCSR(key)
	add := func(ep byte, v any) {
		b, _ := json.Marshal(v)
		f.Add(ep, b)
	}
	add(0, TokenRequest{Kind: "join", Site: "s1", Region: "east", TTL: "1m"})
	add(0, TokenRequest{Kind: "admin", Role: "read-only"})
	add(0, TokenRequest{Kind: "relay", TTL: "-1s"})
	add(0, TokenRequest{Kind: "region", Region: "west"})
	add(0, TokenRequest{Kind: "region", Site: "s1"})
	add(0, TokenRequest{Kind: "nope"})
	f.Add(byte(0), []byte(`{"kind":"admin","rol":"read-only"}`))
	f.Add(byte(0), []byte(`{"kind":"join","site":"s1"}{"kind":"admin"}`))
	f.Add(byte(0), []byte(`{"kind":"join","site":"s1","ttl":"87600000h"}`))
	add(1, TrustRequest{TrustDomain: "other.example", Bundle: bundle})
	add(1, TrustRequest{TrustDomain: "fogmesh.local", Bundle: bundle})
	add(1, TrustRequest{TrustDomain: "Other.example", Bundle: "not pem"})
	f.Add(byte(1), []byte(`{"trustDomain":"x.example","bundle":"`+"-----BEGIN CERTIFICATE-----\\nAAAA\\n-----END CERTIFICATE-----\\n"+`"}`))
	add(2, AdminCertRequest{Name: "alice", CSR: csr, TTL: "1h"})
	add(2, AdminCertRequest{Name: "alice", CSR: csr, TTL: "721h"})
	add(2, AdminCertRequest{Name: "Bob", CSR: csr})
	add(2, AdminCertRequest{Name: "bob", CSR: []byte{0x30, 0x03, 0x02, 0x01, 0x00}})
	f.Add(byte(2), []byte(`{"name":"bob","csr":"!!"}`))
	f.Add(byte(0), []byte(`null`))
	f.Add(byte(1), []byte(`[]`))
	f.Add(byte(2), []byte(``))
	snapshot := func(t *testing.T) []store.KV {
		kvs, err := s.st.ListSecure("")
		if err != nil {
			t.Fatal(err)
		}
		return kvs
	}
	f.Fuzz(func(t *testing.T, ep byte, body []byte) {
		handlers := []struct {
			h   http.HandlerFunc
			req any
		}{{s.handleCreateToken, new(TokenRequest)}, {s.handleTrustAdd, new(TrustRequest)}, {s.handleAdminCert, new(AdminCertRequest)}}
		hd := handlers[int(ep)%len(handlers)]
		before := snapshot(t)
		w := httptest.NewRecorder()
		start := time.Now()
		hd.h(w, httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(body)))
		switch {
		case w.Code != http.StatusOK && w.Code != http.StatusBadRequest:
			t.Fatalf("%d %s", w.Code, w.Body)
		case w.Code == http.StatusBadRequest:
			if !slices.EqualFunc(before, snapshot(t), func(a, b store.KV) bool { return a.Key == b.Key && bytes.Equal(a.Value, b.Value) }) {
				t.Fatalf("a refused body (%s) changed the store", w.Body)
			}
			return
		}
		if !strictly(body, hd.req) {
			t.Fatalf("accepted a body a strict decoder refuses: %s", w.Body)
		}
		switch req := hd.req.(type) {
		case *TokenRequest:
			var resp TokenResponse
			if err := json.Unmarshal(w.Body.Bytes(), &resp); err != nil {
				t.Fatal(err)
			}
			tok, err := identity.ParseToken(resp.Token)
			want := req.Kind
			if want == "" {
				want = identity.TokenJoin
			}
			if err != nil || tok.Kind != want || resp.Kind != want || tok.ID != resp.ID {
				t.Fatalf("asked for a %q token, got %+v (%v)", req.Kind, resp, err)
			}
			if b, _ := s.st.GetSecure(keyToken + tok.ID); b == nil {
				t.Fatal("the token granted is not stored")
			}
			if tok.Kind == identity.TokenAdmin {
				role, err := s.sec.adminRole(resp.Token)
				if want := cmpOr(req.Role, RoleAdmin); err != nil || role != want {
					t.Fatalf("asked for role %q, the token has %q (%v)", req.Role, role, err)
				}
			}
		case *TrustRequest:
			var resp struct {
				TrustDomain string `json:"trustDomain"`
				Roots       int    `json:"roots"`
			}
			json.Unmarshal(w.Body.Bytes(), &resp)
			b, _ := s.st.GetSecure(keyTrust + resp.TrustDomain)
			held, err := identity.ParseBundlePEM(b)
			sent, _ := identity.ParseBundlePEM([]byte(req.Bundle))
			if err != nil || len(held) != resp.Roots || len(sent) != len(held) || resp.TrustDomain == s.sec.ca.TrustDomain().Name() {
				t.Fatalf("trust domain %+v: holds %d roots of %d sent (%v)", resp, len(held), len(sent), err)
			}
			if td, err := identity.ParseTrustDomain(req.TrustDomain); err != nil || td.Name() != resp.TrustDomain {
				t.Fatalf("asked for %q, added %q", req.TrustDomain, resp.TrustDomain)
			}
		case *AdminCertRequest:
			var resp AdminCertResponse
			json.Unmarshal(w.Body.Bytes(), &resp)
			certs, err := identity.ParseCertificatesPEM([]byte(resp.Certificates))
			if err != nil || len(certs) == 0 {
				t.Fatalf("certificates: %v", err)
			}
			id, _ := identity.AdminID(s.sec.ca.TrustDomain(), req.Name)
			c, _ := x509.ParseCertificateRequest(req.CSR)
			leaf := certs[0]
			if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() || resp.ID != id.String() {
				t.Fatalf("asked for %s, got %v", id, leaf.URIs)
			}
			if c == nil || !c.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(leaf.PublicKey) {
				t.Fatal("the certificate is not for the CSR's key")
			}
			if leaf.NotAfter.After(start.Add(maxAdminCertTTL + time.Minute)) {
				t.Fatalf("a certificate until %v, past the longest lifetime", leaf.NotAfter)
			}
		}
	})
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
