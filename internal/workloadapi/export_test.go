package workloadapi

// PeerCredForTest is peerCred, for the external tests that match its
// Caller against svid selectors.
var PeerCredForTest = peerCred
