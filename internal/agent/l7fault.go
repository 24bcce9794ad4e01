package agent

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
)

// chance reports true for percent% of calls (0-100).
func chance(percent float64) bool {
	return percent >= 100 || (percent > 0 && rand.Float64()*100 < percent)
}

// injectFault applies a route rule's fault: the delay (honouring the
// client going away), then the abort, answered by the agent itself with
// no endpoint involved. It returns a response only for an abort.
func (a *Agent) injectFault(req *http.Request, svc string, f *api.Fault) (*http.Response, error) {
	if d := f.Delay; d != nil && chance(d.Percent) {
		a.cfg.Metrics.GetOrCreateCounter(fmt.Sprintf(`fogmesh_http_faults_total{service=%q,kind="delay"}`, svc)).Inc()
		h2WillWait(req.Context()) // l7h2wait.go
		t := time.NewTimer(time.Duration(d.FixedDelay))
		select {
		case <-t.C:
		case <-req.Context().Done():
			t.Stop()
			return nil, req.Context().Err()
		}
	}
	ab := f.Abort
	if ab == nil || !chance(ab.Percent) {
		return nil, nil
	}
	a.cfg.Metrics.GetOrCreateCounter(fmt.Sprintf(`fogmesh_http_faults_total{service=%q,kind="abort"}`, svc)).Inc()
	resp := &http.Response{Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{}, Request: req}
	resp.Header.Set("X-Fogmesh-Fault", "abort")
	if strings.HasPrefix(req.Header.Get("Content-Type"), "application/grpc") && ab.GRPCStatus > 0 {
		// Trailers-only gRPC response.
		resp.StatusCode = http.StatusOK
		resp.Header.Set("Content-Type", "application/grpc")
		resp.Header.Set("Grpc-Status", strconv.Itoa(ab.GRPCStatus))
		resp.Header.Set("Grpc-Message", "fogmesh: fault injected")
		resp.Body = http.NoBody
	} else {
		code := ab.HTTPStatus
		if code == 0 {
			code = http.StatusServiceUnavailable // a gRPC-only abort hit by plain HTTP
		}
		body := "fogmesh: fault injected\n"
		resp.StatusCode = code
		resp.Header.Set("Content-Type", "text/plain; charset=utf-8")
		resp.ContentLength = int64(len(body))
		resp.Body = io.NopCloser(strings.NewReader(body))
	}
	resp.Status = fmt.Sprintf("%d %s", resp.StatusCode, http.StatusText(resp.StatusCode))
	return resp, nil
}
