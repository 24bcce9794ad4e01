package control

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/store"
)

// Admin API, security part (JSON; every call but /healthz needs a client
// certificate of an admin identity or "Authorization: Bearer <admin token>";
// a read-only token may only GET):
//
//	POST   /v1/tokens                {kind: join|relay|region|admin, site, region, role, ttl}  -> TokenResponse
//	POST   /v1/nodes/{name}/revoke                                        -> {revoked: id}
//	POST   /v1/regions/{name}/revoke                                      -> {revoked: id}
//	POST   /v1/relays/{name}/revoke                                       -> {revoked: id}
//	POST   /v1/ca/rotate                                                  -> {pin}
//	GET    /v1/bundle                the trust bundle (PEM)
//	GET    /v1/trust                 federated trust domains
//	POST   /v1/trust                 {trustDomain, bundle (PEM)}
//	DELETE /v1/trust/{trustDomain}
//	POST   /v1/admin/certs           {name, csr, ttl}                     -> AdminCertResponse
//	POST   /v1/admin/certs/{name}/revoke                                  -> {revoked: id}

// TokenRequest is the body of POST /v1/tokens.
type TokenRequest struct {
	Kind   string `json:"kind"`             // join (default), relay, region or admin
	Site   string `json:"site,omitempty"`   // join tokens: the site the node must claim
	Region string `json:"region,omitempty"` // region tokens: the region the regional control plane must claim; join tokens: the node's region (optional)
	Role   string `json:"role,omitempty"`   // admin tokens: admin (default) or read-only
	TTL    string `json:"ttl,omitempty"`    // Go duration; join default 1h, admin default none
}

// TokenResponse answers POST /v1/tokens. Token is shown once; the control
// plane keeps only its hash.
type TokenResponse struct {
	Token   string    `json:"token"`
	ID      string    `json:"id"`
	Kind    string    `json:"kind"`
	Site    string    `json:"site,omitempty"`
	Region  string    `json:"region,omitempty"`
	Role    string    `json:"role,omitempty"`
	Expires time.Time `json:"expires,omitzero"`
}

// AdminCertRequest is the body of POST /v1/admin/certs: a CSR (DER; JSON
// carries it as base64) for an admin client certificate. The key stays
// where the CSR was made.
type AdminCertRequest struct {
	Name string `json:"name"`          // the certificate is spiffe://TD/admin/NAME
	CSR  []byte `json:"csr"`           // DER PKCS #10
	TTL  string `json:"ttl,omitempty"` // Go duration, default 24h, at most 30 days
}

// AdminCertResponse answers POST /v1/admin/certs.
type AdminCertResponse struct {
	ID           string    `json:"id"`
	Certificates string    `json:"certificates"` // PEM chain, leaf first
	Expires      time.Time `json:"expires"`
}

// Admin client certificate lifetimes.
const (
	defaultAdminCertTTL = 24 * time.Hour
	maxAdminCertTTL     = 30 * 24 * time.Hour
)

// TrustRequest is the body of POST /v1/trust.
type TrustRequest struct {
	TrustDomain string `json:"trustDomain"`
	Bundle      string `json:"bundle"` // PEM CA certificates
}

// decodeBody decodes the JSON body of an admin call, of at most limit
// bytes, into v, strictly: one JSON value, no field v does not have. A
// misspelt field is refused, not dropped: {"kind":"admin","rol":"read-only"}
// would otherwise make an admin token of the default role, admin.
func decodeBody(r *http.Request, limit int64, v any) error {
	b, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		return err
	}
	if int64(len(b)) > limit {
		return fmt.Errorf("longer than %d bytes", limit)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return errors.New(strings.TrimPrefix(err.Error(), "json: "))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("data after the JSON value")
	}
	return nil
}

// authenticate enforces admin authentication and roles.
func (s *Server) authenticate(next http.Handler) http.Handler {
	if s.sec == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" || r.URL.Path == "/ui/login" || strings.HasPrefix(r.URL.Path, "/ui/static/") {
			// The UI's login page and its static files (no data) need none.
			next.ServeHTTP(w, r)
			return
		}
		role := ""
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			// Verified in the handshake (adminTLS): an admin identity.
			// Checked again per request: a connection (or a resumed TLS
			// session) outlives a revocation.
			if id, err := x509svid.IDFromCert(r.TLS.PeerCertificates[0]); err == nil && !s.sec.src.Denied(id.String()) &&
				s.sec.adminIssuer(id, r.TLS.PeerCertificates) == nil {
				switch {
				case identity.IsAdminID(s.sec.ca.TrustDomain(), id):
					role = RoleAdmin
				case id == identity.ControlID(s.sec.ca.TrustDomain()):
					role = RoleReplica // a peer replica (statsha.go)
				}
			}
		} else if h := r.Header.Get("Authorization"); h != "" {
			tok, ok := strings.CutPrefix(h, "Bearer ")
			if !ok {
				writeError(w, http.StatusUnauthorized, errors.New("authorization: want Bearer <token>"))
				return
			}
			var err error
			if role, err = s.sec.adminRole(tok); errors.Is(err, errTokenStore) {
				writeError(w, http.StatusServiceUnavailable, err) // the token may be right: not its refusal
				return
			} else if err != nil {
				if !s.refusedCredential(w, r, "admin token", err) {
					writeError(w, http.StatusUnauthorized, fmt.Errorf("token refused: %w", err))
				}
				return
			}
		}
		if role == "" && r.Header.Get("Authorization") == "" && isUIRead(r) {
			// The web UI's cookie (ui.go), for reading the UI only.
			if c, err := r.Cookie(uiCookie); err == nil {
				if role, err = s.sec.adminRole(c.Value); errors.Is(err, errTokenStore) {
					writeError(w, http.StatusServiceUnavailable, err)
					return
				} else if err != nil {
					// Cleared, so that an open UI tab polling with an
					// expired token counts once, not every 3 s.
					http.SetCookie(w, &http.Cookie{Name: uiCookie, Path: "/ui", MaxAge: -1, HttpOnly: true, Secure: r.TLS != nil})
					if s.refusedCredential(w, r, "ui cookie", err) {
						return
					}
				}
			}
			if role == "" {
				http.Redirect(w, r, "/ui/login", http.StatusSeeOther)
				return
			}
		}
		switch {
		case role == "":
			w.Header().Set("WWW-Authenticate", `Bearer realm="fogmesh"`)
			writeError(w, http.StatusUnauthorized, errors.New("authentication required: an admin token (-token, $FOGMESH_TOKEN) or an admin client certificate"))
			return
		case role == RoleReadOnly && r.Method != http.MethodGet && r.Method != http.MethodHead:
			writeError(w, http.StatusForbidden, errors.New("read-only token: only GET is allowed"))
			return
		case role == RoleReplica && (r.Method != http.MethodGet || r.URL.Path != "/v1/stats/local"):
			writeError(w, http.StatusForbidden, errors.New("a peer replica's certificate may only GET /v1/stats/local"))
			return
		}
		next.ServeHTTP(w, withRole(r, role))
	})
}

func (s *Server) securityRoutes(mux *http.ServeMux) {
	need := func(h http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if s.sec == nil {
				writeError(w, http.StatusBadRequest, errors.New("the control plane runs in insecure mode: no CA"))
				return
			}
			h(w, r)
		}
	}
	mux.HandleFunc("POST /v1/tokens", need(s.handleCreateToken))
	mux.HandleFunc("POST /v1/nodes/{name}/revoke", need(func(w http.ResponseWriter, r *http.Request) {
		id, err := s.revokeNode(r.PathValue("name"))
		switch {
		case errors.Is(err, ErrNotFound):
			writeError(w, http.StatusNotFound, err)
		case err != nil:
			writeError(w, http.StatusInternalServerError, err)
		default:
			writeJSON(w, http.StatusOK, map[string]string{"revoked": id})
		}
	}))
	mux.HandleFunc("POST /v1/regions/{name}/revoke", need(func(w http.ResponseWriter, r *http.Request) {
		id, err := s.revokeRegion(r.PathValue("name"))
		if err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"revoked": id})
	}))
	mux.HandleFunc("POST /v1/relays/{name}/revoke", need(func(w http.ResponseWriter, r *http.Request) {
		id, err := s.revokeRelay(r.PathValue("name"))
		if err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"revoked": id})
	}))
	mux.HandleFunc("POST /v1/ca/rotate", need(func(w http.ResponseWriter, r *http.Request) {
		if err := s.needLeader("CA rotation"); err != nil {
			writeError(w, http.StatusServiceUnavailable, err)
			return
		}
		if err := s.sec.ca.Rotate(); err != nil {
			code := http.StatusInternalServerError
			if errors.Is(err, identity.ErrExternalCA) || errors.Is(err, identity.ErrRegionalCA) {
				code = http.StatusBadRequest
			}
			writeError(w, code, err)
			return
		}
		if err := s.pushCA(); err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		if err := s.sec.issueServing(); err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		if err := s.sec.refreshTrust(); err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		s.log.Warn("control: CA rotated", "pin", s.sec.ca.Pin(), "roots", len(s.sec.ca.Roots()))
		writeJSON(w, http.StatusOK, map[string]any{"pin": s.sec.ca.Pin(), "roots": len(s.sec.ca.Roots())})
	}))
	mux.HandleFunc("GET /v1/bundle", need(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-pem-file")
		w.Write(identity.EncodeCertificatesPEM(s.sec.ca.Roots()...))
	}))
	mux.HandleFunc("GET /v1/trust", need(func(w http.ResponseWriter, r *http.Request) {
		t, _ := s.sec.currentTrust()
		out := map[string]int{}
		for td, roots := range t.Bundles {
			out[td] = len(roots)
		}
		writeJSON(w, http.StatusOK, map[string]any{"trustDomain": t.TrustDomain, "bundles": out, "revoked": t.Revoked})
	}))
	mux.HandleFunc("POST /v1/trust", need(s.handleTrustAdd))
	mux.HandleFunc("POST /v1/admin/certs", need(s.handleAdminCert))
	mux.HandleFunc("POST /v1/admin/certs/{name}/revoke", need(func(w http.ResponseWriter, r *http.Request) {
		id, err := s.revokeAdmin(r.PathValue("name"))
		if err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"revoked": id})
	}))
	mux.HandleFunc("DELETE /v1/trust/{td}", need(func(w http.ResponseWriter, r *http.Request) {
		td := r.PathValue("td")
		if err := s.st.UpdateSecure(func(tx *store.SecureTx) error {
			if tx.Get(keyTrust+td) == nil {
				return ErrNotFound
			}
			return tx.Delete(keyTrust + td)
		}); err != nil {
			writeError(w, http.StatusNotFound, fmt.Errorf("trust domain %q: %w", td, err))
			return
		}
		s.sec.refreshTrust()
		writeJSON(w, http.StatusOK, map[string]string{"removed": td})
	}))
}

func (s *Server) handleCreateToken(w http.ResponseWriter, r *http.Request) {
	var req TokenRequest
	if err := decodeBody(r, 4096, &req); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("body: %w", err))
		return
	}
	if req.Kind == "" {
		req.Kind = identity.TokenJoin
	}
	var ttl time.Duration
	if req.TTL != "" {
		var err error
		if ttl, err = time.ParseDuration(req.TTL); err != nil || ttl < 0 {
			writeError(w, http.StatusBadRequest, fmt.Errorf("ttl %q: want a positive duration like 1h", req.TTL))
			return
		}
	}
	site, region := req.Site, ""
	switch {
	case req.Kind == identity.TokenRegion:
		if req.Site != "" {
			writeError(w, http.StatusBadRequest, errors.New("a region token names a region, not a site"))
			return
		}
		site = req.Region
	case req.Kind == identity.TokenJoin:
		region = req.Region // the joining node's region
	case req.Region != "":
		writeError(w, http.StatusBadRequest, fmt.Errorf("region is for region and join tokens, not %s tokens", req.Kind))
		return
	}
	tok, rec, err := s.sec.createToken(req.Kind, site, region, req.Role, ttl)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	p, _ := identity.ParseToken(tok)
	s.log.Info("control: token created", "id", p.ID, "kind", rec.Kind, "site", rec.Site, "region", rec.Region, "role", rec.Role, "expires", rec.Expires)
	writeJSON(w, http.StatusOK, TokenResponse{Token: tok, ID: p.ID, Kind: rec.Kind, Site: rec.Site, Region: rec.Region, Role: rec.Role, Expires: rec.Expires})
}

func (s *Server) handleTrustAdd(w http.ResponseWriter, r *http.Request) {
	var req TrustRequest
	if err := decodeBody(r, 2<<20, &req); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("body: %w", err))
		return
	}
	td, err := identity.ParseTrustDomain(req.TrustDomain)
	if err != nil || req.TrustDomain == "" {
		writeError(w, http.StatusBadRequest, fmt.Errorf("trustDomain %q: %v", req.TrustDomain, err))
		return
	}
	if td == s.sec.ca.TrustDomain() {
		writeError(w, http.StatusBadRequest, errors.New("that is this control plane's own trust domain (rotate its CA instead)"))
		return
	}
	certs, err := identity.ParseBundlePEM([]byte(req.Bundle))
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	if err := s.st.UpdateSecure(func(tx *store.SecureTx) error {
		return tx.Put(keyTrust+td.Name(), identity.EncodeCertificatesPEM(certs...))
	}); err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	if err := s.sec.refreshTrust(); err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	s.log.Warn("control: federated trust domain added", "trustDomain", td.Name(), "roots", len(certs))
	writeJSON(w, http.StatusOK, map[string]any{"trustDomain": td.Name(), "roots": len(certs)})
}

// handleAdminCert signs an admin client certificate for a CSR made where
// its key lives (only the admin role gets here: the call is a POST).
func (s *Server) handleAdminCert(w http.ResponseWriter, r *http.Request) {
	var req AdminCertRequest
	if err := decodeBody(r, 64<<10, &req); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("body: %w", err))
		return
	}
	if !siteRE.MatchString(req.Name) {
		writeError(w, http.StatusBadRequest, fmt.Errorf("name %q is not a DNS label (lowercase letters, digits, '-')", req.Name))
		return
	}
	ttl := defaultAdminCertTTL
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil || d <= 0 || d > maxAdminCertTTL {
			writeError(w, http.StatusBadRequest, fmt.Errorf("ttl %q: want a positive duration up to %v", req.TTL, maxAdminCertTTL))
			return
		}
		ttl = d
	}
	csr, err := identity.ParseCSR(req.CSR)
	if err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("csr: %w", err))
		return
	}
	id, err := identity.AdminID(s.sec.ca.TrustDomain(), req.Name)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	certs, err := s.sec.ca.Sign(csr.PublicKey, id, identity.IssueOptions{TTL: ttl})
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	s.sec.issued("admin", certs[0])
	s.log.Warn("control: admin client certificate issued", "id", id.String(), "serial", certs[0].SerialNumber.Text(16),
		"notAfter", certs[0].NotAfter, "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, AdminCertResponse{ID: id.String(), Certificates: string(identity.EncodeCertificatesPEM(certs...)), Expires: certs[0].NotAfter})
}

// isUIRead is a GET or HEAD of the web UI, the only requests the UI's
// cookie authenticates.
func isUIRead(r *http.Request) bool {
	return (r.Method == http.MethodGet || r.Method == http.MethodHead) &&
		(r.URL.Path == "/ui" || strings.HasPrefix(r.URL.Path, "/ui/"))
}
