package sign

import (
	"encoding/base64"
	"testing"
)

// FuzzParseEnvelope: .att layers come from outside; no input panics, and
// what parses is a signed in-toto statement with a type and, if any, an
// object predicate.
func FuzzParseEnvelope(f *testing.F) {
	stmt := `{"_type":"https://in-toto.io/Statement/v0.1","subject":[{"name":"x","digest":{"sha256":"ab"}}],"predicateType":"https://slsa.dev/provenance/v1","predicate":{}}`
	f.Add([]byte(`{"payloadType":"application/vnd.in-toto+json","payload":"` + base64.StdEncoding.EncodeToString([]byte(stmt)) + `","signatures":[{"sig":"AA=="}]}`))
	f.Add([]byte(`{"payloadType":"application/vnd.in-toto+json","payload":"","signatures":[]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := parseEnvelope(b)
		if err != nil {
			return
		}
		if st.PredicateType == "" || len(st.Subject) == 0 || (st.Predicate != nil && st.Predicate.Kind() != '{') {
			t.Fatalf("accepted %+v", st)
		}
	})
}
