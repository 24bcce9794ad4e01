package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fogmesh/fogmesh/internal/agent"
	"github.com/fogmesh/fogmesh/internal/cli"
)

// adminAuth is how admin verbs authenticate: set by serverFlag's flags.
var adminAuth struct {
	token, ca, cert, key *string
}

// adminClient returns the HTTP client for the admin API: it trusts the
// bundle given with -ca ($FOGMESH_CA) for https URLs.
// With -cert and -key it presents that admin client certificate.
func adminClient() (*http.Client, error) {
	c := &http.Client{Timeout: 30 * time.Second}
	cfg := &tls.Config{MinVersion: tls.VersionTLS13}
	if adminAuth.ca != nil && *adminAuth.ca != "" {
		b, err := os.ReadFile(*adminAuth.ca)
		if err != nil {
			return nil, cli.Usagef("-ca: %v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return nil, cli.Usagef("-ca: %s holds no PEM certificate", *adminAuth.ca)
		}
		cfg.RootCAs = pool
	}
	if certFile, keyFile := deref(adminAuth.cert), deref(adminAuth.key); certFile != "" || keyFile != "" {
		if certFile == "" || keyFile == "" {
			return nil, cli.Usagef("-cert and -key go together")
		}
		kp, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, cli.Usagef("-cert/-key: %v", err)
		}
		cfg.Certificates = []tls.Certificate{kp}
	}
	if cfg.RootCAs == nil && cfg.Certificates == nil {
		return c, nil
	}
	c.Transport = &http.Transport{TLSClientConfig: cfg}
	return c, nil
}

// tlsHint says what to set when the control plane's certificate could not
// be verified: a bare x509 error does not say that the CLI needs its
// trust bundle.
func tlsHint(err error) string {
	var ua x509.UnknownAuthorityError
	var cv *tls.CertificateVerificationError
	if !errors.As(err, &ua) && !errors.As(err, &cv) {
		return ""
	}
	if deref(adminAuth.ca) == "" {
		return "\n  the control plane's certificate is not trusted yet: set FOGMESH_CA (or -ca) to its trust bundle, STATE/ca.pem of 'fogmesh control' (fogmesh dev prints the export line)"
	}
	return fmt.Sprintf("\n  the trust bundle %s (FOGMESH_CA or -ca) does not verify this control plane: give the bundle of the control plane at this address (STATE/ca.pem)", *adminAuth.ca)
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func serverFlag(fs *flag.FlagSet) *string {
	adminAuth.token = fs.String("token", envToken(), "admin API token ($FOGMESH_TOKEN, or the file $FOGMESH_TOKEN_FILE names)")
	adminAuth.ca = fs.String("ca", os.Getenv("FOGMESH_CA"), "trust bundle (PEM) that verifies the control plane, e.g. STATE/ca.pem ($FOGMESH_CA)")
	// audit verify has its own -cert (the checkpoint signer): there the
	// admin client certificate is -admin-cert/-admin-key.
	certFlag, keyFlag := "cert", "key"
	if fs.Lookup("cert") != nil || fs.Lookup("key") != nil {
		certFlag, keyFlag = "admin-cert", "admin-key"
	}
	adminAuth.cert = fs.String(certFlag, os.Getenv("FOGMESH_CERT"), "admin client certificate (PEM, from 'fogmesh admin cert create'; with -"+keyFlag+") instead of a token ($FOGMESH_CERT)")
	adminAuth.key = fs.String(keyFlag, os.Getenv("FOGMESH_KEY"), "its private key (PEM) ($FOGMESH_KEY)")
	return fs.String("server", envOr("FOGMESH_SERVER", "https://127.0.0.1:7070"), "control plane admin API URL ($FOGMESH_SERVER)")
}

// envToken is the admin token of the environment: $FOGMESH_TOKEN, else
// the content of the file $FOGMESH_TOKEN_FILE names (the control plane's
// admin.token, so that `kubectl exec deploy/fogmesh-control -- fogmesh ...`
// works in an image without a shell; deploy/control.yaml sets it).
func envToken() string {
	if t := os.Getenv("FOGMESH_TOKEN"); t != "" {
		return t
	}
	if p := os.Getenv("FOGMESH_TOKEN_FILE"); p != "" {
		b, _ := os.ReadFile(p)
		return strings.TrimSpace(string(b))
	}
	return ""
}

func agentFlag(fs *flag.FlagSet) *string {
	return fs.String("agent", envOr("FOGMESH_AGENT", "http://127.0.0.1:7073"), "local agent API URL ($FOGMESH_AGENT)")
}

// agentTokenFlag is the token a secure agent's local API wants for
// changes: the flag, $FOGMESH_AGENT_TOKEN, or the file in the agent's
// default state directory when readable.
func agentTokenFlag(fs *flag.FlagSet) func() string {
	tok := fs.String("agent-token", os.Getenv("FOGMESH_AGENT_TOKEN"), "local agent API token for changes ($FOGMESH_AGENT_TOKEN; default: read /var/lib/fogmesh/agent/"+agent.LocalTokenFile+")")
	return func() string {
		if *tok != "" {
			return strings.TrimSpace(*tok)
		}
		b, _ := os.ReadFile(filepath.Join("/var/lib/fogmesh/agent", agent.LocalTokenFile))
		return strings.TrimSpace(string(b))
	}
}

// callAgent is call with the local API token.
func callAgent(method, url, token string, body []byte, out any) error {
	return callWith(method, url, body, out, token)
}

// call sends a request and decodes a JSON answer into out. A non-2xx answer
// becomes an error carrying the server's message; a 400 is a usage error.
func call(method, url string, body []byte, out any) error {
	return callWith(method, url, body, out, "")
}

func callWith(method, url string, body []byte, out any, agentToken string) error {
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		return cli.Usagef("%v", err)
	}
	if agentToken != "" {
		req.Header.Set("Authorization", "Bearer "+agentToken)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/yaml")
	}
	httpClient := &http.Client{Timeout: 30 * time.Second}
	if adminAuth.token != nil && strings.HasPrefix(url, "https://") {
		if *adminAuth.token != "" {
			req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(*adminAuth.token))
		}
		if httpClient, err = adminClient(); err != nil {
			return err
		}
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w%s", method, url, err, tlsHint(err))
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read: %w", method, url, err)
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
		}
		msg := strings.TrimSpace(string(b))
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		if resp.StatusCode == http.StatusBadRequest || resp.StatusCode == http.StatusNotFound {
			return cli.Usagef("%s", msg)
		}
		return fmt.Errorf("%s: %s", resp.Status, msg)
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(b, out)
}

func parseFlags(fs *flag.FlagSet, args []string) error {
	// Accept flags after positional arguments too (fogmesh get nodes -o json).
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return &cli.UsageError{Err: err}
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	return fs.Parse(append([]string{"--"}, pos...))
}

// isHelp reports whether arg asks for help, as Go's flag package reads it.
func isHelp(arg string) bool {
	switch arg {
	case "-h", "-help", "--help", "--h":
		return true
	}
	return false
}
