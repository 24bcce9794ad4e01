package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/fogmesh/fogmesh/internal/cli"
	"github.com/fogmesh/fogmesh/internal/control"
	"github.com/fogmesh/fogmesh/internal/identity"
)

// runAdmin runs `fogmesh admin cert create NAME -out DIR`: an admin client
// certificate (spiffe://TD/admin/NAME). The key is made here and never
// leaves this host: the control plane gets a CSR. Admin verbs present the
// result with -cert DIR/NAME-cert.pem -key DIR/NAME-key.pem.
func runAdmin(args []string) error {
	fs := flag.NewFlagSet("fogmesh admin", flag.ContinueOnError)
	server := serverFlag(fs)
	out := fs.String("out", ".", "directory for NAME-cert.pem and NAME-key.pem (mode 0600)")
	ttl := fs.String("ttl", "", "lifetime, e.g. 8h (default 24h, at most 720h)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() == 3 && fs.Arg(0) == "cert" && fs.Arg(1) == "revoke" {
		name := fs.Arg(2)
		if strings.ContainsAny(name, `/\?#`) || name == "" || name[0] == '.' {
			return cli.Usagef("admin cert revoke: name %q is not a DNS label", name)
		}
		var resp map[string]string
		if err := call("POST", strings.TrimRight(*server, "/")+"/v1/admin/certs/"+name+"/revoke", []byte("{}"), &resp); err != nil {
			return err
		}
		fmt.Printf("%s revoked\n", resp["revoked"])
		return nil
	}
	if fs.NArg() != 3 || fs.Arg(0) != "cert" || fs.Arg(1) != "create" {
		return cli.Usagef("admin: want cert create NAME [-out DIR] [-ttl D], or cert revoke NAME")
	}
	name := fs.Arg(2)
	certPath, keyPath := filepath.Join(*out, name+"-cert.pem"), filepath.Join(*out, name+"-key.pem")
	if strings.ContainsAny(name, `/\`) || name == "" || name[0] == '.' {
		return cli.Usagef("admin cert create: name %q is not a DNS label", name)
	}
	for _, p := range []string{certPath, keyPath} {
		if _, err := os.Stat(p); err == nil {
			return cli.Usagef("admin cert create: %s exists; remove it or choose another -out", p)
		}
	}
	key, err := identity.NewKey()
	if err != nil {
		return err
	}
	csr, err := identity.NewCSR(key)
	if err != nil {
		return err
	}
	body, _ := json.Marshal(control.AdminCertRequest{Name: name, CSR: csr, TTL: *ttl})
	var resp control.AdminCertResponse
	if err := call("POST", strings.TrimRight(*server, "/")+"/v1/admin/certs", body, &resp); err != nil {
		return err
	}
	keyPEM, err := identity.EncodeKeyPEM(key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*out, 0o700); err != nil {
		return fmt.Errorf("admin cert create: %w", err)
	}
	if err := identity.WriteFileAtomic(keyPath, keyPEM, 0o600); err != nil {
		return fmt.Errorf("admin cert create: %w", err)
	}
	if err := identity.WriteFileAtomic(certPath, []byte(resp.Certificates), 0o644); err != nil {
		os.Remove(keyPath)
		return fmt.Errorf("admin cert create: %w", err)
	}
	fmt.Printf("%s until %s\n  -cert %s -key %s\n", resp.ID, resp.Expires.Format("2006-01-02T15:04:05Z07:00"), certPath, keyPath)
	return nil
}
