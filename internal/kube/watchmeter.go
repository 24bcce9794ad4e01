package kube

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
)

// watchMeter sees every watch the informers open, because client-go's
// reflector handles a watch that breaks mid-stream or ends with 410 Gone
// by itself (it relists) and tells no handler: the meter counts them
// (fogmesh_kube_watch_errors_total) and reports them to the source.
// It reads JSON watch streams (the source asks for JSON).
type watchMeter struct {
	next   http.RoundTripper
	report func(resource, reason string, err error)
}

func (m *watchMeter) RoundTrip(r *http.Request) (*http.Response, error) {
	q := r.URL.Query().Get("watch")
	if q != "true" && q != "1" {
		return m.next.RoundTrip(r)
	}
	res := resourceOf(r.URL.Path)
	resp, err := m.next.RoundTrip(r)
	if err != nil {
		if r.Context().Err() == nil {
			m.report(res, "refused", err)
		}
		return resp, err
	}
	if resp.StatusCode == http.StatusGone {
		m.report(res, "gone", errors.New(resp.Status))
		return resp, nil
	}
	if resp.StatusCode/100 != 2 {
		m.report(res, "error", errors.New(resp.Status))
		return resp, nil
	}
	resp.Body = &meteredBody{rc: resp.Body, ctx: r.Context(), res: res, m: m}
	return resp, nil
}

// resourceOf is the resource of an API path (/api/v1/services,
// /apis/g/v/namespaces/ns/things).
func resourceOf(path string) string {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	if len(parts) == 0 {
		return path
	}
	return parts[len(parts)-1]
}

// meteredBody passes a watch stream through, noting 410 Gone events and
// a stream that breaks.
type meteredBody struct {
	rc     io.ReadCloser
	ctx    context.Context
	res    string
	m      *watchMeter
	line   []byte      // the event being read
	closed atomic.Bool // by the client: what Read fails with then is no broken link
}

func (b *meteredBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	b.scan(p[:n])
	if err != nil && !errors.Is(err, io.EOF) && b.ctx.Err() == nil && !b.closed.Load() {
		b.m.report(b.res, "broken", err)
	}
	return n, err
}

// scan looks at whole lines (JSON watch events) for an ERROR event with
// code 410; a line is kept up to 64 KiB, enough for a Status.
func (b *meteredBody) scan(p []byte) {
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			if len(b.line)+len(p) <= 64<<10 {
				b.line = append(b.line, p...)
			}
			return
		}
		if len(b.line)+i <= 64<<10 {
			b.line = append(b.line, p[:i]...)
		}
		if bytes.Contains(b.line, []byte(`"type":"ERROR"`)) && bytes.Contains(b.line, []byte(`"code":410`)) {
			b.m.report(b.res, "gone", errors.New("410 Gone in the watch stream"))
		}
		b.line = b.line[:0]
		p = p[i+1:]
	}
}

func (b *meteredBody) Close() error {
	b.closed.Store(true)
	return b.rc.Close()
}
