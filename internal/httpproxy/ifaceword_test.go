package httpproxy

import (
	"context"
	"io"
	"net/http"
	"reflect"
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

// noBody is a type of NoBody's name and shape in another package.
type noBody struct{}

func (noBody) Read([]byte) (int, error) { return 0, io.EOF }
func (noBody) Close() error             { return nil }

// wrapped embeds a body: a wrapper type, never NoBody.
type wrapped struct{ io.ReadCloser }

// TestBodyNoneHostile: BodyNone is == for values that only look like
// NoBody (a type of its name elsewhere, a pointer to NoBody, a wrapper of
// it, typed nils) and for NoBody reached by the runtime's conversions
// (through any, io.Reader, reflect), whose type word the runtime looks up
// rather than the compiler's static one: the same itab either way.
func TestBodyNoneHostile(t *testing.T) {
	var nilNop *noBody
	var r io.Reader = http.NoBody
	viaReader, _ := r.(io.ReadCloser)
	viaAny, _ := any(http.NoBody).(io.ReadCloser)
	viaReflect, _ := reflect.ValueOf(http.NoBody).Interface().(io.ReadCloser)
	viaReflectConv, _ := reflect.ValueOf(&viaAny).Elem().Interface().(io.ReadCloser)
	for i, b := range []io.ReadCloser{noBody{}, &noBody{}, nilNop, &http.NoBody, wrapped{http.NoBody}, wrapped{},
		viaReader, viaAny, viaReflect, viaReflectConv, io.ReadCloser(http.NoBody)} {
		if got, want := BodyNone(b), b == nil || b == http.NoBody; got != want {
			t.Errorf("%d: BodyNone(%T %#v) = %t, want %t", i, b, b, got, want)
		}
	}
	for _, b := range []io.ReadCloser{viaReader, viaAny, viaReflect, viaReflectConv} {
		if !BodyNone(b) {
			t.Errorf("BodyNone(%T) false for NoBody converted by the runtime", b)
		}
	}
}

// valCtx is a context of a non-pointer type: == compares its fields.
type valCtx struct {
	context.Context
	n int
}

// TestSameContextValueTypes: for contexts of a non-pointer type,
// SameContext may say false where == says true (equal values in two
// boxes), and never true where == says false.
func TestSameContextValueTypes(t *testing.T) {
	bg := context.Background()
	a, b, c := context.Context(valCtx{bg, 1}), context.Context(valCtx{bg, 1}), context.Context(valCtx{bg, 2})
	a2 := a // the same box
	all := []context.Context{a, b, c, a2, bg, valCtx{}, valCtx{}}
	for i, x := range all {
		for j, y := range all {
			if SameContext(x, y) && x != y {
				t.Errorf("SameContext(%d, %d) true, but !=", i, j)
			}
		}
	}
	if !SameContext(a, a2) {
		t.Error("SameContext false for one interface value copied")
	}
}
