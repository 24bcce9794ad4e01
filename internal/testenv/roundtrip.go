package testenv

import (
	"encoding/json"
	"reflect"
	"testing"

	"sigs.k8s.io/yaml"
)

// ConfigRoundTrip is the round-trip property of a config file decoder:
// v, a value decode accepted, written as JSON and as YAML, decodes again
// to the same value (an empty map or list is the same as none: omitempty
// leaves it out). It returns the value decoded from the JSON.
func ConfigRoundTrip[T any](t testing.TB, v *T, decode func([]byte, any) error) *T {
	t.Helper()
	j, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("accepted config does not encode: %v", err)
	}
	back := new(T)
	if err := decode(j, back); err != nil {
		t.Fatalf("accepted config, written as %s, is refused: %v", j, err)
	}
	if !reflect.DeepEqual(emptyAsNil(v), emptyAsNil(back)) {
		t.Fatalf("accepted config %#v, written as %s, reads back as %#v", *v, j, *back)
	}
	y, err := yaml.Marshal(v)
	if err != nil {
		t.Fatalf("accepted config does not encode as YAML: %v", err)
	}
	backY := new(T)
	if err := decode(y, backY); err != nil {
		t.Fatalf("accepted config, written as YAML %q, is refused: %v", y, err)
	}
	if !reflect.DeepEqual(emptyAsNil(v), emptyAsNil(backY)) {
		t.Fatalf("accepted config %#v, written as YAML %q, reads back as %#v", *v, y, *backY)
	}
	return back
}

// emptyAsNil returns a deep copy of v (a pointer) in which every empty map
// and slice is nil.
func emptyAsNil(v any) any {
	c := reflect.New(reflect.TypeOf(v).Elem())
	c.Elem().Set(normEmpty(reflect.ValueOf(v).Elem()))
	return c.Interface()
}

func normEmpty(v reflect.Value) reflect.Value {
	switch v.Kind() {
	case reflect.Map, reflect.Slice:
		if v.Len() == 0 {
			return reflect.Zero(v.Type())
		}
		if v.Kind() == reflect.Slice {
			c := reflect.MakeSlice(v.Type(), v.Len(), v.Len())
			for i := range v.Len() {
				c.Index(i).Set(normEmpty(v.Index(i)))
			}
			return c
		}
		c := reflect.MakeMapWithSize(v.Type(), v.Len())
		for it := v.MapRange(); it.Next(); {
			c.SetMapIndex(it.Key(), normEmpty(it.Value()))
		}
		return c
	case reflect.Pointer:
		if v.IsNil() {
			return v
		}
		c := reflect.New(v.Type().Elem())
		c.Elem().Set(normEmpty(v.Elem()))
		return c
	case reflect.Struct:
		c := reflect.New(v.Type()).Elem()
		c.Set(v)
		for i := range v.NumField() {
			if c.Field(i).CanSet() {
				c.Field(i).Set(normEmpty(v.Field(i)))
			}
		}
		return c
	}
	return v
}
