package httpproxy

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
)

type emptyBody struct{}

func (emptyBody) Read([]byte) (int, error) { return 0, io.EOF }
func (emptyBody) Close() error             { return nil }

// TestBodyNone: BodyNone is body == nil || body == http.NoBody, for nil,
// NoBody and bodies of other types (one an empty struct like NoBody's).
func TestBodyNone(t *testing.T) {
	var nilPtr *TimedBody
	for _, b := range []io.ReadCloser{nil, http.NoBody, emptyBody{}, io.NopCloser(strings.NewReader("x")),
		io.NopCloser(http.NoBody), nilPtr, ClientBody{R: http.NoBody}} {
		if got, want := BodyNone(b), b == nil || b == http.NoBody; got != want {
			t.Errorf("BodyNone(%#v) = %t, want %t", b, got, want)
		}
	}
}

// TestSameContext: SameContext is == for the contexts the fast path
// compares (pointer types), and false for different ones.
func TestSameContext(t *testing.T) {
	bg := context.Background()
	v := context.WithValue(bg, leanKey{}, 1)
	w := context.WithValue(bg, leanKey{}, 1)
	c, cancel := context.WithCancel(v)
	defer cancel()
	s := WithStreamCancel(c)
	all := []context.Context{bg, context.TODO(), v, w, c, s}
	for i, a := range all {
		for j, b := range all {
			if got, want := SameContext(a, b), i == j; got != want {
				t.Errorf("SameContext(%v, %v) = %t, want %t", a, b, got, want)
			}
			if SameContext(a, b) && a != b {
				t.Errorf("SameContext(%v, %v) but !=", a, b)
			}
		}
	}
}
