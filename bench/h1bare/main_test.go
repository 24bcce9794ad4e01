package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestModels: both models forward keep-alive GETs from several clients
// and answer each with its own response; a request with a body closes the
// connection.
func TestModels(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "path=", r.URL.Path)
	}))
	defer backend.Close()
	target := strings.TrimPrefix(backend.URL, "http://")
	for _, model := range []string{"go", "epoll"} {
		t.Run(model, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go proxy(ln, target, model, 2)
			tr := &http.Transport{MaxIdleConnsPerHost: 4}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr}
			errs := make(chan error, 4)
			for g := range 4 {
				go func() {
					for i := range 50 {
						path := fmt.Sprintf("/g%d/r%d", g, i)
						resp, err := client.Get("http://" + ln.Addr().String() + path)
						if err != nil {
							errs <- err
							return
						}
						b, err := io.ReadAll(resp.Body)
						resp.Body.Close()
						if err != nil || string(b) != "path="+path {
							errs <- fmt.Errorf("%s: %q %v", path, b, err)
							return
						}
					}
					errs <- nil
				}()
			}
			for range 4 {
				if err := <-errs; err != nil {
					t.Fatal(err)
				}
			}
			if _, err := client.Post("http://"+ln.Addr().String()+"/", "text/plain", strings.NewReader("body")); err == nil {
				t.Fatal("a request with a body was forwarded")
			}
		})
	}
}
