package main

import (
	"flag"
	"strings"
	"time"
)

// regionFlags are the flags of fogmesh control for the hierarchy of
// control planes (one place, shared by the regional identity and the
// replication to the global plane).
type regionFlags struct {
	mode, region, upstream, joinToken *string
	caTTL                             *time.Duration
}

func registerRegionFlags(fs *flag.FlagSet) *regionFlags {
	return &regionFlags{
		mode:      fs.String("mode", "", "global (default) or regional: a regional control plane's CA is an intermediate of the global one at -upstream"),
		region:    fs.String("region", "", "regional mode: this control plane's region"),
		upstream:  fs.String("upstream", "", "regional mode: the global control plane's sync addresses, comma separated, tried in order (replicas)"),
		joinToken: fs.String("join-token", "", "regional mode, first start: a region token from the global control plane (fogmesh token create -kind region -region NAME)"),
		caTTL:     fs.Duration("region-ca-ttl", 0, "global mode: lifetime of the regional intermediate CAs signed here (default 720h, renewed at half-life)"),
	}
}

// apply copies the flags given on the command line over the config file's.
func (r *regionFlags) apply(set map[string]bool, fc *controlFile) {
	if set["mode"] {
		fc.Mode = *r.mode
	}
	if set["region"] {
		fc.Region = *r.region
	}
	if set["upstream"] {
		fc.Upstreams = nil
		for _, a := range strings.Split(*r.upstream, ",") {
			if a = strings.TrimSpace(a); a != "" {
				fc.Upstreams = append(fc.Upstreams, a)
			}
		}
	}
	if set["region-ca-ttl"] {
		fc.RegionCATTL = durationValue(*r.caTTL)
	}
}
