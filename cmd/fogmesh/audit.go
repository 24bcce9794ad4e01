package main

import (
	"crypto"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"

	"github.com/fogmesh/fogmesh/internal/audit"
	"github.com/fogmesh/fogmesh/internal/cli"
	"github.com/fogmesh/fogmesh/internal/control"
)

const auditUsage = `usage:
  fogmesh audit verify [--cert FILE | --pubkey FILE] [-o text|json] FILE...
      check audit log files (a log and its rotated files, in any order)
  fogmesh audit verify --node NODE | --all [-server URL]
      ask the control plane to check its copy of NODE's chain, or every chain

exit status: 0 intact, 1 tampered (each problem names the record: file:line and seq),
2 bad usage or unreadable files
`

// auditVerifyArgs are the flags of fogmesh audit verify.
type auditVerifyArgs struct {
	files          []string
	cert, pubkey   string
	node           string
	all            bool
	server, output string
}

// errTampered is returned when a chain has problems: exit status 1.
var errTampered = errors.New("audit chain tampered")

func runAudit(args []string) error {
	if len(args) == 0 || args[0] != "verify" {
		fmt.Fprint(os.Stderr, auditUsage)
		return cli.Usagef("audit: want 'verify'")
	}
	fs := flag.NewFlagSet("fogmesh audit verify", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(fs.Output(), auditUsage); fs.PrintDefaults() }
	var a auditVerifyArgs
	fs.StringVar(&a.cert, "cert", "", "PEM certificate whose key signs the checkpoints")
	fs.StringVar(&a.pubkey, "pubkey", "", "PEM public key that signs the checkpoints")
	fs.StringVar(&a.node, "node", "", "verify the control plane's copy of this node's chain")
	fs.BoolVar(&a.all, "all", false, "verify every chain the control plane holds (its own and every node's)")
	fs.StringVar(&a.output, "o", "text", "output: text or json")
	server := serverFlag(fs)
	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	a.files, a.server = fs.Args(), *server
	return runAuditVerify(a, os.Stdout)
}

func runAuditVerify(a auditVerifyArgs, out io.Writer) error {
	if a.output != "text" && a.output != "json" {
		return cli.Usagef("audit verify: -o %q is not text or json", a.output)
	}
	remote := a.node != "" || a.all
	switch {
	case remote && len(a.files) > 0:
		return cli.Usagef("audit verify: give files or --node/--all, not both")
	case !remote && len(a.files) == 0:
		return cli.Usagef("audit verify: no files given\n\n%s", auditUsage)
	case a.cert != "" && a.pubkey != "":
		return cli.Usagef("audit verify: give --cert or --pubkey, not both")
	case remote && (a.cert != "" || a.pubkey != ""):
		return cli.Usagef("audit verify: the control plane checks signatures with the keys it knows; --cert/--pubkey are for files")
	}
	if remote {
		return auditVerifyRemote(a, out)
	}
	var v audit.Verifier
	if p := a.cert + a.pubkey; p != "" {
		b, err := os.ReadFile(p)
		if err != nil {
			return cli.Usagef("audit verify: %v", err)
		}
		k, err := audit.ParsePublicKeyPEM(b)
		if err != nil {
			return cli.Usagef("audit verify: %s: %v", p, err)
		}
		v.PublicKey = k
	}
	rep, err := v.Verify(a.files...)
	if err != nil {
		return cli.Usagef("%v", err) // unreadable: exit 2
	}
	return printReports(out, a.output, []control.AuditChain{{Node: rep.Node, Source: "files", LastSeq: rep.LastSeq,
		LastHash: rep.LastHash, Report: rep}}, v.PublicKey)
}

func auditVerifyRemote(a auditVerifyArgs, out io.Writer) error {
	u := strings.TrimRight(a.server, "/") + "/v1/audit"
	if !a.all {
		u += "/" + url.PathEscape(a.node)
	}
	var resp control.AuditResponse
	if err := call("GET", u+"?verify=1", nil, &resp); err != nil {
		// The chain could not be read: not a verdict on it.
		return &cli.UsageError{Err: err}
	}
	return printReports(out, a.output, resp.Chains, nil)
}

// printReports prints each chain's verdict and returns errTampered if any
// chain has problems.
func printReports(out io.Writer, format string, chains []control.AuditChain, key crypto.PublicKey) error {
	tampered := 0
	for _, c := range chains {
		if c.Report != nil && !c.Report.Intact() {
			tampered++
		}
	}
	if format == "json" {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		enc.Encode(chains)
	} else {
		for _, c := range chains {
			r := c.Report
			if r == nil {
				fmt.Fprintf(out, "%s (%s): not verified\n", c.Node, c.Source)
				continue
			}
			sigs := "signatures not checked"
			if key != nil || c.Source != "files" {
				sigs = fmt.Sprintf("%d signed", r.Signed)
			}
			fmt.Fprintf(out, "%s (%s): %d records, seq %d..%d, %d checkpoints (%s)\n",
				c.Node, c.Source, r.Records, r.FirstSeq, r.LastSeq, r.Checkpoints, sigs)
			for _, n := range r.Notes {
				fmt.Fprintf(out, "  note: %s\n", n)
			}
			for _, p := range r.Problems {
				fmt.Fprintf(out, "  %s\n", p)
			}
			if r.Intact() {
				fmt.Fprintf(out, "  intact\n")
			} else {
				fmt.Fprintf(out, "  TAMPERED: %d problems\n", len(r.Problems))
			}
		}
	}
	if tampered > 0 {
		return fmt.Errorf("%w: %d of %d chains", errTampered, tampered, len(chains))
	}
	return nil
}
