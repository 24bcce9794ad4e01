package workloadapi

import (
	"crypto/x509"
	"fmt"
	"sort"

	"google.golang.org/protobuf/encoding/protowire"
)

// Field numbers of the Workload API messages (workload.proto).
const (
	// X509SVIDResponse
	fieldSVIDs            = 1 // repeated X509SVID
	fieldFederatedBundles = 3 // map<string, bytes>, keyed by spiffe://<trust domain>
	// X509SVID
	fieldSPIFFEID = 1 // string
	fieldChain    = 2 // bytes: DER certificates, leaf first
	fieldKey      = 3 // bytes: PKCS#8
	fieldBundle   = 4 // bytes: DER certificates of the trust domain's roots
	fieldHint     = 5 // string
	// X509BundlesResponse
	fieldBundles = 2 // map<string, bytes>
	// map entries
	fieldMapKey   = 1
	fieldMapValue = 2
)

// x509SVIDResponse encodes an X509SVIDResponse: the SVIDs, each with its own
// trust domain's bundle, and the other trust domains' bundles as federated.
func (s *Server) x509SVIDResponse(svids []SVID) ([]byte, error) {
	bundles := s.src.Bundles()
	own := s.src.TrustDomain()
	var out []byte
	for _, sv := range svids {
		key, err := x509.MarshalPKCS8PrivateKey(sv.Key)
		if err != nil {
			return nil, fmt.Errorf("svid %s: key: %w", sv.ID, err)
		}
		var m []byte
		m = protowire.AppendTag(m, fieldSPIFFEID, protowire.BytesType)
		m = protowire.AppendString(m, sv.ID)
		m = protowire.AppendTag(m, fieldChain, protowire.BytesType)
		m = protowire.AppendBytes(m, concatDER(sv.Chain))
		m = protowire.AppendTag(m, fieldKey, protowire.BytesType)
		m = protowire.AppendBytes(m, key)
		m = protowire.AppendTag(m, fieldBundle, protowire.BytesType)
		m = protowire.AppendBytes(m, concatDER(bundles[own]))
		if sv.Hint != "" {
			m = protowire.AppendTag(m, fieldHint, protowire.BytesType)
			m = protowire.AppendString(m, sv.Hint)
		}
		out = protowire.AppendTag(out, fieldSVIDs, protowire.BytesType)
		out = protowire.AppendBytes(out, m)
	}
	for _, td := range sortedKeys(bundles) {
		if td == own {
			continue
		}
		out = appendMapEntry(out, fieldFederatedBundles, "spiffe://"+td, concatDER(bundles[td]))
	}
	return out, nil
}

// x509BundlesResponse encodes an X509BundlesResponse with every bundle.
func x509BundlesResponse(bundles map[string][]*x509.Certificate) []byte {
	var out []byte
	for _, td := range sortedKeys(bundles) {
		out = appendMapEntry(out, fieldBundles, "spiffe://"+td, concatDER(bundles[td]))
	}
	return out
}

func appendMapEntry(b []byte, field protowire.Number, k string, v []byte) []byte {
	var e []byte
	e = protowire.AppendTag(e, fieldMapKey, protowire.BytesType)
	e = protowire.AppendString(e, k)
	e = protowire.AppendTag(e, fieldMapValue, protowire.BytesType)
	e = protowire.AppendBytes(e, v)
	b = protowire.AppendTag(b, field, protowire.BytesType)
	return protowire.AppendBytes(b, e)
}

func concatDER(certs []*x509.Certificate) []byte {
	var b []byte
	for _, c := range certs {
		b = append(b, c.Raw...)
	}
	return b
}

func sortedKeys(m map[string][]*x509.Certificate) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
