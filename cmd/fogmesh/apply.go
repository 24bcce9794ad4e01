package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/cli"
	"github.com/fogmesh/fogmesh/internal/control"
)

func readDocFile(path string) ([]byte, error) {
	if path == "" {
		return nil, cli.Usagef("-f FILE is required")
	}
	var b []byte
	var err error
	if path == "-" {
		b, err = io.ReadAll(io.LimitReader(os.Stdin, api.MaxDocumentBytes+1))
	} else {
		b, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, cli.Usagef("%v", err)
	}
	return b, nil
}

func runApply(args []string) error {
	fs := flag.NewFlagSet("fogmesh apply", flag.ContinueOnError)
	server := serverFlag(fs)
	file := fs.String("f", "", "file with YAML or JSON documents (- for stdin)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	b, err := readDocFile(*file)
	if err != nil {
		return err
	}
	// Check locally first for a fast, clear error; the server checks again.
	if _, err := api.Decode(b); err != nil {
		return cli.Usagef("%s: %v", *file, err)
	}
	var resp control.ApplyResponse
	if err := call("POST", strings.TrimRight(*server, "/")+"/v1/apply", b, &resp); err != nil {
		return err
	}
	for _, w := range resp.Warnings {
		fmt.Fprintf(os.Stderr, "warning: %s\n", w)
	}
	for _, k := range resp.Applied {
		fmt.Printf("%s applied\n", strings.ToLower(k))
	}
	return nil
}

func runDelete(args []string) error {
	fs := flag.NewFlagSet("fogmesh delete", flag.ContinueOnError)
	server := serverFlag(fs)
	ns := fs.String("n", "", "namespace (default \"default\")")
	file := fs.String("f", "", "delete the objects named in this file")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	base := strings.TrimRight(*server, "/") + "/v1/"
	var targets []string
	if *file != "" {
		b, err := readDocFile(*file)
		if err != nil {
			return err
		}
		objs, err := api.Decode(b)
		if err != nil {
			return cli.Usagef("%s: %v", *file, err)
		}
		for _, o := range objs {
			m := o.GetMeta()
			switch o.GetKind() {
			case api.KindNode:
				targets = append(targets, "nodes/"+m.Name)
			default:
				targets = append(targets, kindAliases[strings.ToLower(o.GetKind())]+"/"+api.NamespaceOr(m.Namespace)+"/"+m.Name)
			}
		}
	} else {
		if fs.NArg() != 2 {
			return cli.Usagef("delete: want KIND NAME or -f FILE")
		}
		kind, ok := kindAliases[fs.Arg(0)]
		if !ok {
			return cli.Usagef("delete: unknown resource %q", fs.Arg(0))
		}
		if kind == "nodes" {
			targets = append(targets, "nodes/"+fs.Arg(1))
		} else {
			targets = append(targets, kind+"/"+api.NamespaceOr(*ns)+"/"+fs.Arg(1))
		}
	}
	for _, t := range targets {
		if err := call("DELETE", base+t, nil, nil); err != nil {
			return err
		}
		fmt.Printf("%s deleted\n", t)
	}
	return nil
}

func runSession(args []string) error {
	fs := flag.NewFlagSet("fogmesh session", flag.ContinueOnError)
	server := serverFlag(fs)
	ns := fs.String("n", "", "namespace (default \"default\")")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 4 || fs.Arg(0) != "move" {
		return cli.Usagef("session: want move SERVICE KEY ENDPOINT")
	}
	s := &api.Session{Meta: api.Meta{Namespace: *ns},
		Spec: api.SessionSpec{Service: fs.Arg(1), Key: fs.Arg(2), Endpoint: fs.Arg(3)}}
	if err := s.Validate(); err != nil {
		return cli.Usagef("session: %v", err)
	}
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	var resp control.ApplyResponse
	if err := call("POST", strings.TrimRight(*server, "/")+"/v1/apply", b, &resp); err != nil {
		return err
	}
	fmt.Printf("session %q of %s/%s moved to %s\n", s.Spec.Key, s.Meta.Namespace, s.Spec.Service, s.Spec.Endpoint)
	return nil
}
