package main

import (
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"
)

// steadyGets keeps workers GETting url (each pausing between requests)
// until stopped, counting answers of 200 with body want as served and
// everything else as failed: the load that HA and cut tests hold
// through a fault.
type steadyGets struct {
	mu     sync.Mutex
	ok     int
	failed []string
	stopCh chan struct{}
	once   sync.Once
	wg     sync.WaitGroup
}

func startSteadyGets(t *testing.T, url, want string, workers int, pause time.Duration) *steadyGets {
	g := &steadyGets{stopCh: make(chan struct{})}
	t.Cleanup(func() { g.stop() }) // also when the test fails first
	c := &http.Client{Timeout: 10 * time.Second}
	for range workers {
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			for i := 0; i < 100000; i++ { // bounded; stopped earlier
				select {
				case <-g.stopCh:
					return
				default:
				}
				resp, err := c.Get(url)
				g.mu.Lock()
				if err != nil {
					g.failed = append(g.failed, err.Error())
				} else {
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 || string(b) != want {
						g.failed = append(g.failed, fmt.Sprintf("%s %q", resp.Status, b))
					} else {
						g.ok++
					}
				}
				g.mu.Unlock()
				time.Sleep(pause)
			}
		}()
	}
	return g
}

// served is the count of good answers so far.
func (g *steadyGets) served() int { g.mu.Lock(); defer g.mu.Unlock(); return g.ok }

// stop ends the workers and returns the good count and the failures.
func (g *steadyGets) stop() (int, []string) {
	g.once.Do(func() { close(g.stopCh) })
	g.wg.Wait()
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.ok, g.failed
}
