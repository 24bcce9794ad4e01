package tracing

import (
	"google.golang.org/protobuf/encoding/protowire"
)

// OTLP protobuf encoding of spans (opentelemetry/proto/collector/trace/v1
// ExportTraceServiceRequest), written by hand with protowire: field
// numbers below are those of the .proto files; tests decode the output with
// the official generated types.
//
//	ExportTraceServiceRequest { repeated ResourceSpans resource_spans = 1; }
//	ResourceSpans  { Resource resource = 1; repeated ScopeSpans scope_spans = 2; }
//	Resource       { repeated KeyValue attributes = 1; }
//	ScopeSpans     { InstrumentationScope scope = 1; repeated Span spans = 2; }
//	InstrumentationScope { string name = 1; string version = 2; }
//	Span { bytes trace_id = 1; bytes span_id = 2; string trace_state = 3;
//	       bytes parent_span_id = 4; string name = 5; SpanKind kind = 6;
//	       fixed64 start_time_unix_nano = 7; fixed64 end_time_unix_nano = 8;
//	       repeated KeyValue attributes = 9; Status status = 15; fixed32 flags = 16; }
//	Status   { string message = 2; StatusCode code = 3; }
//	KeyValue { string key = 1; AnyValue value = 2; }
//	AnyValue { oneof { string string_value = 1; int64 int_value = 3; } }

// ScopeName is the instrumentation scope of the agent's spans.
const ScopeName = "github.com/fogmesh/fogmesh/agent"

// AppendExportRequest appends the ExportTraceServiceRequest of spans,
// under one resource with attributes res, to b.
func AppendExportRequest(b []byte, res []Attr, spans []*Span) []byte {
	var rs []byte
	var r []byte
	for _, a := range res {
		r = appendKeyValueField(r, 1, a)
	}
	rs = appendMsg(rs, 1, r)
	var ss []byte
	ss = appendMsg(ss, 1, protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), ScopeName))
	var sp []byte
	for _, s := range spans {
		sp = appendSpan(sp[:0], s)
		ss = appendMsg(ss, 2, sp)
	}
	rs = appendMsg(rs, 2, ss)
	return appendMsg(b, 1, rs)
}

func appendSpan(b []byte, s *Span) []byte {
	b = appendBytes(b, 1, s.Context.TraceID[:])
	b = appendBytes(b, 2, s.Context.SpanID[:])
	if s.Context.State != "" {
		b = appendStr(b, 3, s.Context.State)
	}
	if s.Parent.IsValid() {
		b = appendBytes(b, 4, s.Parent[:])
	}
	b = appendStr(b, 5, s.Name)
	if s.Kind != 0 {
		b = protowire.AppendTag(b, 6, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(s.Kind))
	}
	b = protowire.AppendTag(b, 7, protowire.Fixed64Type)
	b = protowire.AppendFixed64(b, uint64(s.Start.UnixNano()))
	b = protowire.AppendTag(b, 8, protowire.Fixed64Type)
	b = protowire.AppendFixed64(b, uint64(s.End.UnixNano()))
	for _, a := range s.Attrs {
		b = appendKeyValueField(b, 9, a)
	}
	if s.Status != StatusUnset || s.StatusMsg != "" {
		var st []byte
		if s.StatusMsg != "" {
			st = appendStr(st, 2, s.StatusMsg)
		}
		if s.Status != StatusUnset {
			st = protowire.AppendTag(st, 3, protowire.VarintType)
			st = protowire.AppendVarint(st, uint64(s.Status))
		}
		b = appendMsg(b, 15, st)
	}
	// flags: bit 8 (0x100) says whether the parent is remote is known,
	// bit 9 (0x200) that it is; the W3C trace flags in the low byte.
	flags := uint32(0x1)
	if s.Parent.IsValid() {
		flags |= 0x300
	} else {
		flags |= 0x100
	}
	b = protowire.AppendTag(b, 16, protowire.Fixed32Type)
	return protowire.AppendFixed32(b, flags)
}

// appendKeyValueField appends a as KeyValue field num, in place: the
// lengths are computed first, so no scratch buffer is allocated per
// attribute (most of a sampled span's encoding).
func appendKeyValueField(b []byte, num protowire.Number, a Attr) []byte {
	anyLen := 1 + protowire.SizeBytes(len(a.Str)) // string_value = 1
	if a.IsInt {
		anyLen = 1 + protowire.SizeVarint(uint64(a.Int)) // int_value = 3
	}
	kvLen := 1 + protowire.SizeBytes(len(a.Key)) + 1 + protowire.SizeBytes(anyLen)
	b = protowire.AppendTag(b, num, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(kvLen))
	b = appendStr(b, 1, a.Key)
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(anyLen))
	if a.IsInt {
		b = protowire.AppendTag(b, 3, protowire.VarintType)
		return protowire.AppendVarint(b, uint64(a.Int))
	}
	return appendStr(b, 1, a.Str)
}

func appendMsg(b []byte, num protowire.Number, msg []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, msg)
}

func appendBytes(b []byte, num protowire.Number, v []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

func appendStr(b []byte, num protowire.Number, v string) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, v)
}
