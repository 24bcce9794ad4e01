package h2srv

import (
	"bytes"
	"io"
	"net/http"
	"testing"

	"github.com/fogmesh/fogmesh/internal/flowwin"
)

// BenchmarkLargeRequestBody: one 64 MiB request body from x/net's HTTP/2
// client over loopback, read by the handler as it comes: the request
// stream window's cost to an upload (it grows from 64 KiB to 1 MiB).
func BenchmarkLargeRequestBody(b *testing.B) { benchLargeRequestBody(b) }

// BenchmarkLargeRequestBodyNoGrowth: the same with the process's window
// budget spent: the stream keeps 64 KiB.
func BenchmarkLargeRequestBodyNoGrowth(b *testing.B) {
	old := flowwin.Process.Swap(0)
	defer flowwin.Process.Swap(old)
	benchLargeRequestBody(b)
}

func benchLargeRequestBody(b *testing.B) {
	const size = 64 << 20
	addr := serve(b, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n, err := io.Copy(io.Discard, r.Body); err != nil || n != size {
			http.Error(w, "short body", http.StatusBadRequest)
		}
	})})
	client, _ := h2cClient(b)
	chunk := bytes.Repeat([]byte{'x'}, 64<<10)
	b.SetBytes(size)
	b.ResetTimer()
	for range b.N {
		pr, pw := io.Pipe()
		go func() {
			for sent := 0; sent < size; sent += len(chunk) {
				if _, err := pw.Write(chunk); err != nil {
					return
				}
			}
			pw.Close()
		}()
		req, _ := http.NewRequest("POST", "http://"+addr+"/", pr)
		req.ContentLength = size
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
}
