// Command otlpsink is the OTLP/HTTP collector of bench.sh's observability
// rows (OBS=1): it accepts POST /v1/traces, reads the body and answers 200
// with an empty ExportTraceServiceResponse, counting requests and bytes
// (printed on SIGTERM). It stands in for a collector that keeps up, so the
// rows measure the agent's cost, not a collector's.
package main

import (
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:4318", "listen address")
	flag.Parse()
	var reqs, bytes atomic.Int64
	http.HandleFunc("/v1/traces", func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		reqs.Add(1)
		bytes.Add(n)
		w.Header().Set("Content-Type", "application/x-protobuf")
	})
	go func() {
		if err := http.ListenAndServe(*addr, nil); err != nil {
			fmt.Fprintln(os.Stderr, "otlpsink:", err)
			os.Exit(1)
		}
	}()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	fmt.Printf("requests %d bytes %d\n", reqs.Load(), bytes.Load())
}
