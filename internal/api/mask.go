package api

// The egress masking rules of a Service (spec.egress[].mask). The masker,
// internal/mask, compiles them; it registers ValidateMask so that every
// program that links it checks them fully when a document is validated.

// MaskConfig says what to mask (internal/mask compiles it). Its zero value masks nothing. It is also the
// document format (spec.egress[].mask of a Service), hence the JSON tags.
type MaskConfig struct {
	// Detectors: any of cn-id, cn-mobile, bank-card.
	//
	//   - cn-id: 17 digits and a check digit (0-9 or X), ISO 7064 MOD 11-2
	//     checksum, a known province code and a real birth date between
	//     1900 and 2099. Numbers with a wrong checksum are not masked.
	//   - cn-mobile: 11 digits 1[3-9]xxxxxxxxx, also after 86, +86 or 0086;
	//     the prefix is kept.
	//   - bank-card: 13-19 digits passing the Luhn check whose first digit
	//     is 2-6 (Mastercard 2-series, American Express, JCB, Visa,
	//     Mastercard, UnionPay, Discover): a 13-digit millisecond timestamp
	//     starts with 1 and is left alone.
	//
	// Digits may be grouped by single spaces or dashes ("6222 0212 3456
	// 7890 123", "138-1234-5678") when every group has at least 3 digits,
	// and may be decimal digits of any script, spaces and dashes of any
	// width ("１３８－１２３４－５６７８"; digits.go).
	// A match needs non-digits (or the ends of the value) on both sides:
	// digits of a longer number are not matched.
	Detectors []string `json:"detectors,omitempty"`
	// JSONPaths mask or drop values by position in JSON bodies.
	JSONPaths []MaskPathRule `json:"jsonPaths,omitempty"`
	// Regexes are RE2 patterns (Go regexp) whose matches in JSON strings,
	// numbers and scanned text are masked like detector matches.
	Regexes []MaskRegexRule `json:"regexes,omitempty"`
	// Headers mask, drop or scan request headers by name.
	Headers []MaskHeaderRule `json:"headers,omitempty"`
	// KeepFirst and KeepLast are how many characters of a masked value
	// stay in clear at each end (default 0: all masked; at most 16). When
	// they would keep all of a short value, at least half of it is masked
	// instead, the kept characters taken from the start first.
	KeepFirst int `json:"keepFirst,omitempty"`
	KeepLast  int `json:"keepLast,omitempty"`
	// MaskChar replaces masked characters (default "*"): one character,
	// not a digit, a letter, a quote or a backslash, so that a masked value
	// never matches a detector again.
	MaskChar string `json:"maskChar,omitempty"`
	// ContentTypes are the bodies scanned (default application/json and
	// +json). An entry is a media type ("application/json", which also
	// names JSON's other names: text/json, application/x-json and the
	// NDJSON/JSON Lines types), a suffix ("+json"), a type wildcard
	// ("text/*") or "*" (every body). JSON types get the JSON scanner,
	// others are scanned as text (detectors and regexes; paths do not
	// apply). A body without Content-Type is scanned as JSON when it starts
	// like JSON, else passes (or, with "*", is scanned as text).
	// Multipart bodies pass unless listed (then they are scanned as text).
	ContentTypes []string `json:"contentTypes,omitempty"`
	// OnMalformed: what to do with a body declared JSON that is not:
	// "reject" (default) fails the body read, so the request is aborted and
	// nothing after the error is sent (the client gets an error), or "pass"
	// sends the rest of the body unchanged.
	OnMalformed string `json:"onMalformed,omitempty"`
	// OnCompressed: what to do with a body to scan when any coding of any
	// Content-Encoding field is not identity: "reject" (default), "pass"
	// unchanged, or "decode": a body in one gzip or deflate coding is
	// decompressed, masked and compressed again in the same coding (other
	// codings, and more than one, are still rejected; a body that
	// decompresses to more than 1 MiB plus 100 times its size is
	// malformed: a decompression bomb).
	OnCompressed string `json:"onCompressed,omitempty"`
	// OnUpgrade: what to do, when there are body rules, with a request
	// that asks to switch protocols (an Upgrade header such as WebSocket,
	// or CONNECT): what flows after the switch is no HTTP body and cannot
	// be inspected. "reject" (default) or "pass" unchanged.
	OnUpgrade string `json:"onUpgrade,omitempty"`
	// MaxTokenBytes bounds the buffered part of one JSON string or of a
	// window of text (default 1 MiB, at least 4096). A longer string value
	// is scanned in windows of this size that overlap by 256 bytes: every
	// detector match is still found; a regex match spanning a window edge
	// that starts more than 256 bytes before it is masked whole up to the
	// edge (not partly kept). Object keys longer than this are malformed.
	MaxTokenBytes int `json:"maxTokenBytes,omitempty"`
}

// MaskPathRule names JSON values: "$" then .name, ['name'], .* (every member),
// [n] or [*] (every element), e.g. $.customer.idNumber, $.items[*].card.
// Member names match in any case, as many backends bind them.
type MaskPathRule struct {
	Path   string `json:"path"`
	Action string `json:"action,omitempty"` // mask (default) or drop
}

// MaskRegexRule is a user pattern; Name labels its metrics.
type MaskRegexRule struct {
	Name    string `json:"name"`
	Pattern string `json:"pattern"`
}

// MaskHeaderRule applies to the request header called Name (any case).
type MaskHeaderRule struct {
	Name   string `json:"name"`
	Action string `json:"action,omitempty"` // mask (default), drop or detect
}

// ValidateMask, when set (internal/mask sets it in its init), checks a
// MaskConfig the way the masker compiles it. An error that has a
// MaskField method names the field at fault, relative to the MaskConfig.
// Without it, only the document's shape is checked.
var ValidateMask func(MaskConfig) error
