package api

import (
	"bytes"
	"encoding"
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"
)

// LocateDecodeError finds where a strict decode of the JSON data into a
// value of v's type fails and returns it as a FieldError with the full
// path (spec.ports[0].bogus), or nil if it finds no fault. encoding/json
// names an unknown field without its path ("bogus") and a bad value of a
// TextUnmarshaler (a Duration) without any field, so an operator cannot
// tell which of many fields to fix; this walk can.
func LocateDecodeError(data []byte, v any) *FieldError {
	t := reflect.TypeOf(v)
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil {
		return nil
	}
	return locate(json.RawMessage(data), t, "", 0)
}

// maxLocateDepth bounds the walk on hostile nesting.
const maxLocateDepth = 64

var (
	textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()
	jsonUnmarshaler = reflect.TypeFor[json.Unmarshaler]()
	rawMessage      = reflect.TypeFor[json.RawMessage]()
)

func locate(raw json.RawMessage, t reflect.Type, path string, depth int) *FieldError {
	if depth > maxLocateDepth {
		return nil
	}
	raw = bytes.TrimSpace(raw)
	if bytes.Equal(raw, []byte("null")) {
		return nil
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	pt := reflect.PointerTo(t)
	if t == rawMessage || t.Kind() == reflect.Interface {
		return nil
	}
	if pt.Implements(jsonUnmarshaler) || pt.Implements(textUnmarshaler) || leafKind(t.Kind()) {
		if err := json.Unmarshal(raw, reflect.New(t).Interface()); err != nil {
			return &FieldError{Field: orTop(path), Reason: leafReason(err)}
		}
		return nil
	}
	switch t.Kind() {
	case reflect.Struct:
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(raw, &obj); err != nil {
			return &FieldError{Field: orTop(path), Reason: leafReason(err)}
		}
		fields := jsonFields(t)
		for _, k := range sortedRawKeys(obj) {
			ft, ok := fields[k]
			if !ok {
				for name, f := range fields { // encoding/json matches case-insensitively
					if strings.EqualFold(name, k) {
						ft, ok = f, true
						break
					}
				}
			}
			if !ok {
				return &FieldError{Field: join(path, k), Reason: "unknown field"}
			}
			if fe := locate(obj[k], ft, join(path, k), depth+1); fe != nil {
				return fe
			}
		}
	case reflect.Slice, reflect.Array:
		var items []json.RawMessage
		if err := json.Unmarshal(raw, &items); err != nil {
			return &FieldError{Field: orTop(path), Reason: leafReason(err)}
		}
		for i, it := range items {
			if fe := locate(it, t.Elem(), path+"["+strconv.Itoa(i)+"]", depth+1); fe != nil {
				return fe
			}
		}
	case reflect.Map:
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(raw, &obj); err != nil {
			return &FieldError{Field: orTop(path), Reason: leafReason(err)}
		}
		for _, k := range sortedRawKeys(obj) {
			if fe := locate(obj[k], t.Elem(), path+"["+strconv.Quote(k)+"]", depth+1); fe != nil {
				return fe
			}
		}
	}
	return nil
}

func leafKind(k reflect.Kind) bool {
	switch k {
	case reflect.Struct, reflect.Slice, reflect.Array, reflect.Map:
		return false
	}
	return true
}

// leafReason is a decode error without encoding/json's prefix and its
// Go-internal type names where a plainer word exists.
func leafReason(err error) string {
	if te, ok := err.(*json.UnmarshalTypeError); ok {
		return fmt.Sprintf("cannot use a JSON %s here (want %s)", te.Value, te.Type)
	}
	return strings.TrimPrefix(err.Error(), "json: ")
}

// jsonFields maps the JSON names of t's fields, with embedded structs'
// fields inline as encoding/json treats them, to their types.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		ft := f.Type
		if f.Anonymous && name == "" {
			et := ft
			if et.Kind() == reflect.Pointer {
				et = et.Elem()
			}
			if et.Kind() == reflect.Struct {
				for k, v := range jsonFields(et) {
					if _, dup := out[k]; !dup {
						out[k] = v
					}
				}
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = ft
	}
	return out
}

func sortedRawKeys(m map[string]json.RawMessage) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func join(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

func orTop(path string) string {
	if path == "" {
		return "(document)"
	}
	return path
}
