package main

import (
	"crypto"
	"encoding/json"
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
  fogmesh audit verify [--cert FILE | --pubkey FILE] [--head SEQ:HASH] [-o text|json] FILE...
      check audit log files (a log and its rotated files, in any order)
  fogmesh audit verify --node NODE | --all [-server URL]
      ask the control plane to check its copy of NODE's chain, or every chain,
      each against the head (last seq and hash) it stored when it took the records

A hash chain cannot show records cut off its end, or appended after its last signed
checkpoint, by itself: the end must be anchored by a head known from elsewhere. For a
node's own files, take the head from 'fogmesh audit verify --node NODE' (or GET
/v1/audit/NODE: lastSeq:lastHash) and pass it with --head; records after it were not
shipped yet and are reported as unanchored.

exit status:
  0  intact: no problem, and every chain is anchored from seq 1 to its head
  1  tampered: a problem in some chain (each names the record: file:line and seq)
  2  bad usage, unreadable files, or the control plane could not be asked
  3  unanchored: no problem found, but some chain's ends are not anchored (no head
     given, records after the head or the last signed checkpoint, or a start after
     seq 1): removals there, or appends, would not show. Never "intact".
`

// auditVerifyArgs are the flags of fogmesh audit verify.
type auditVerifyArgs struct {
	files          []string
	cert, pubkey   string
	head           string
	node           string
	all            bool
	server, output string
}

// Exit statuses of audit verify beyond 0 and 2.
const (
	exitTampered   = 1
	exitUnanchored = 3
)

// verifyError is audit verify's verdict as an error: its exit status.
type verifyError struct {
	code int
	msg  string
}

func (e *verifyError) Error() string { return e.msg }
func (e *verifyError) ExitCode() int { return e.code }

func runAudit(args []string) error {
	if len(args) > 0 && isHelp(args[0]) {
		fmt.Print(auditUsage)
		return nil
	}
	if len(args) == 0 || args[0] != "verify" {
		fmt.Fprint(os.Stderr, auditUsage)
		return cli.Usagef("audit: want 'verify'")
	}
	fs := flag.NewFlagSet("fogmesh audit verify", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(fs.Output(), auditUsage); fs.PrintDefaults() }
	var a auditVerifyArgs
	fs.StringVar(&a.cert, "cert", "", "PEM certificate whose key signs the checkpoints")
	fs.StringVar(&a.pubkey, "pubkey", "", "PEM public key that signs the checkpoints")
	fs.StringVar(&a.head, "head", "", "SEQ:HASH of the chain's last record as known from elsewhere (the control plane's lastSeq:lastHash)")
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
	case remote && a.head != "":
		return cli.Usagef("audit verify: the control plane checks its copies against the heads it stored; --head is for files")
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
	if a.head != "" {
		h, err := audit.ParseHead(a.head)
		if err != nil {
			return cli.Usagef("audit verify: --head: %v", err)
		}
		v.Head = &h
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

// printReports prints each chain's verdict and returns a verifyError
// unless every chain is intact: exit 1 if any chain is tampered, else 3 if
// any is unanchored.
func printReports(out io.Writer, format string, chains []control.AuditChain, key crypto.PublicKey) error {
	tampered, unanchored := 0, 0
	for _, c := range chains {
		if r := c.Report; r != nil && r.Verdict == "" {
			// From a control plane older than anchoring: no head was
			// checked, so "no problem" is not "intact".
			r.Unanchored = append(r.Unanchored, "the control plane did not check this chain against a head (an older version)")
		}
		switch {
		case c.Report == nil:
			unanchored++ // not verified: nothing shown either way
		case c.Report.Tampered():
			tampered++
		case !c.Report.Intact():
			unanchored++
		}
	}
	if format == "json" {
		b, err := json.MarshalIndent(chains, "", "  ")
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "%s\n", jsonTermSafe(b))
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
				if r.LastSigned > 0 {
					sigs += fmt.Sprintf(", the last at seq %d", r.LastSigned)
				}
			}
			fmt.Fprintf(out, "%s (%s): %d records, seq %d..%d, %d checkpoints (%s)\n",
				c.Node, c.Source, r.Records, r.FirstSeq, r.LastSeq, r.Checkpoints, sigs)
			switch {
			case r.Head != nil && c.Source == "files":
				fmt.Fprintf(out, "  head: %s (given)\n", r.Head)
			case r.Head != nil:
				fmt.Fprintf(out, "  head: %s (stored by the control plane; to check the chain's own files: --head %s)\n", r.Head, r.Head)
			}
			for _, n := range r.Notes {
				fmt.Fprintf(out, "  note: %s\n", n)
			}
			for _, p := range r.Problems {
				fmt.Fprintf(out, "  %s\n", p)
			}
			for _, u := range r.Unanchored {
				fmt.Fprintf(out, "  unanchored: %s\n", u)
			}
			if r.Damaged > 0 {
				fmt.Fprintf(out, "  damaged: %d records lost to damage on the node's disk\n", r.Damaged)
			}
			switch {
			case r.Tampered():
				fmt.Fprintf(out, "  TAMPERED: %d problems\n", len(r.Problems))
			case !r.Intact():
				fmt.Fprintf(out, "  UNANCHORED: no problem in seq %d..%d, but its ends are not anchored: removals or appends there would not show\n", r.FirstSeq, r.LastSeq)
			case r.Records == 0:
				fmt.Fprintf(out, "  intact: no records, and none were ever taken\n")
			default:
				fmt.Fprintf(out, "  intact: seq 1..%d, anchored at the head\n", r.LastSeq)
			}
		}
	}
	switch {
	case tampered > 0:
		return &verifyError{exitTampered, fmt.Sprintf("audit chain tampered: %d of %d chains", tampered, len(chains))}
	case unanchored > 0:
		return &verifyError{exitUnanchored, fmt.Sprintf("audit chain unanchored: %d of %d chains have ends nothing vouches for (exit 3)", unanchored, len(chains))}
	}
	return nil
}
