package testenv

import "golang.org/x/net/http2"

// H2Windows is one side's view of the send windows the peer gives it on
// an HTTP/2 connection with one stream, for raw frame-level test peers
// that must send only what the windows allow. Both start at RFC 9113's
// 65,535 octets.
type H2Windows struct {
	Conn, Stream int64
}

// NewH2Windows returns the windows before any SETTINGS or WINDOW_UPDATE.
func NewH2Windows() *H2Windows { return &H2Windows{Conn: 65535, Stream: 65535} }

// Take applies a frame the peer sent: its SETTINGS_INITIAL_WINDOW_SIZE
// (acknowledged on fr) or a WINDOW_UPDATE. It returns the increment of a
// stream WINDOW_UPDATE (0 for anything else).
func (w *H2Windows) Take(f http2.Frame, fr *http2.Framer) (streamInc int64) {
	switch f := f.(type) {
	case *http2.SettingsFrame:
		if f.IsAck() {
			return 0
		}
		if v, ok := f.Value(http2.SettingInitialWindowSize); ok {
			w.Stream += int64(v) - 65535
		}
		fr.WriteSettingsAck()
	case *http2.WindowUpdateFrame:
		if f.StreamID == 0 {
			w.Conn += int64(f.Increment)
			return 0
		}
		w.Stream += int64(f.Increment)
		return int64(f.Increment)
	}
	return 0
}

// Sent takes n flow-controlled bytes off both windows.
func (w *H2Windows) Sent(n int64) {
	w.Conn -= n
	w.Stream -= n
}

// Room is what may be sent now.
func (w *H2Windows) Room() int64 { return min(w.Conn, w.Stream) }
