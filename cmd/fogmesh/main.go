// Command fogmesh is the one binary of fogmesh: the control plane, the node
// agent, the embedded demo, and the CLI verbs against the admin API.
//
// Exit codes: 0 success, 1 runtime failure, 2 bad usage, config or input.
package main

import (
	"fmt"
	"os"

	"github.com/fogmesh/fogmesh/internal/cli"
)

const usage = `fogmesh — a service mesh for edge sites

Programs:
  fogmesh dev                      run the embedded demo (control plane + 4 agents)
  fogmesh control [flags]          run the control plane (--mode regional --region R --upstream ADDR
                                   [--join-token fmg1...]: a regional one, its CA an intermediate of the global one)
  fogmesh agent [flags]            run a node agent
  fogmesh relay [flags]            run a relay for agents behind NATs (reflexive addresses,
                                   introductions, relayed bytes; mesh mTLS)

Admin verbs (talk to the control plane, -server or $FOGMESH_SERVER, default https://127.0.0.1:7070;
authenticate with -token or $FOGMESH_TOKEN or -cert/-key, verify it with -ca or $FOGMESH_CA = STATE/ca.pem):
  fogmesh get nodes|services|endpoints|trust [-n NS] [-o table|json|yaml]
  fogmesh get paths                each node's path to its peers: direct, punched or relayed, relay, RTT, bytes
  fogmesh check [-o json]          is the mesh healthy? one line per check with a hint; exit 1 if one fails
  fogmesh stat [-edges] [-agents URL,...]  per service: requests/s, success ratio, p50/p95/p99 latency
  fogmesh top [-iterations N]      the same, refreshed every -interval (ctrl-C stops)
  fogmesh apply -f FILE            create or update services, endpoints (YAML or JSON; - for stdin)
  fogmesh delete service|endpoint NAME [-n NS] | node NAME | -f FILE
  fogmesh session move SERVICE KEY ENDPOINT [-n NS]   move a pinned session to another instance
  fogmesh token create -site SITE [-ttl 1h]            a one-time join token for a node of SITE
  fogmesh token create -kind admin [-role read-only]  an admin API token
  fogmesh token create -kind region -region R         a one-time token for the regional control plane of R
  fogmesh node revoke NAME         deny-list a node: its mesh and sync connections are refused
  fogmesh region revoke NAME       deny-list a region: every certificate its intermediate CA issued is refused
  fogmesh relay revoke NAME        deny-list a relay: agents refuse it, its renewals and control stream end
  fogmesh ca rotate                new root; the old one stays trusted for the overlap window
  fogmesh trust add -domain D -bundle FILE            federate another trust domain
  fogmesh trust remove D                              stop trusting it
  fogmesh admin cert create NAME [-out DIR] [-ttl 24h]  an admin client certificate (key made here);
                                   admin verbs present it with -cert/-key ($FOGMESH_CERT/$FOGMESH_KEY)

Agent verbs (talk to the local agent, -agent or $FOGMESH_AGENT, default http://127.0.0.1:7073):
  fogmesh register -service S [-n NS] -port name=port[,..] [-address IP] [-name N] [-check tcp|http|none]
  fogmesh deregister NAME
  fogmesh routes                   the agent's routing view (tiers, health)
  fogmesh paths                    the agent's path to each peer: direct, punched or relayed, RTT, bytes
  fogmesh describe service NAME [-n NS]   a service as this agent routes it: endpoints
                                   with tier, weight, health, in-flight and EWMA latency

Audit:
  fogmesh audit verify [--cert F|--pubkey F] [--head SEQ:HASH] FILE...   check audit log files
  fogmesh audit verify --node NODE | --all             check the control plane's copies
                                   exit 0 intact, 1 tampered, 3 no tampering found but unanchored

Demo verbs (talk to a running 'fogmesh dev'):
  fogmesh demo stop|start NODE     stop or start the hello instance on NODE

Kubernetes:
  fogmesh install [-namespace NS] [-registry R -tag T] [-sites a,b] [-control-addr HOST:PORT] [-no-capture]
                                   print the manifests for kubectl apply -f - (README, Install on Kubernetes)

  fogmesh version

Run 'fogmesh COMMAND -h' for a command's flags.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(cli.ExitUsage)
	}
	cmd, args := os.Args[1], os.Args[2:]
	var err error
	switch cmd {
	case "control":
		err = runControl(args)
	case "agent":
		err = cli.RunAgent("fogmesh", args)
	case "relay":
		err = runRelay(args)
	case "dev":
		err = runDev(args)
	case "get":
		err = runGet(args)
	case "apply":
		err = runApply(args)
	case "delete":
		err = runDelete(args)
	case "register":
		err = runRegister(args)
	case "deregister":
		err = runDeregister(args)
	case "routes":
		err = runRoutes(args)
	case "paths":
		err = runPaths(args)
	case "session":
		err = runSession(args)
	case "describe":
		err = runDescribe(args)
	case "check":
		err = runCheck(args)
	case "stat", "top":
		err = runStat(cmd, args)
	case "demo":
		err = runDemo(args)
	case "audit":
		err = runAudit(args)
	case "token":
		err = runToken(args)
	case "node":
		err = runNode(args)
	case "region":
		err = runRegion(args)
	case "ca":
		err = runCA(args)
	case "trust":
		err = runTrust(args)
	case "admin":
		err = runAdmin(args)
	case "install":
		err = runInstall(args)
	case "version", "-version", "--version":
		err = runVersion(args)
	case "help", "-h", "-help", "--help":
		fmt.Print(usage)
		return
	default:
		fmt.Fprintf(os.Stderr, "fogmesh: unknown command %q\n\n%s", cmd, usage)
		os.Exit(cli.ExitUsage)
	}
	os.Exit(cli.ExitCode("fogmesh "+cmd, err))
}
