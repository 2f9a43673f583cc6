package sign_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/gate/sign"
)

// A trusted signer's SBOM attestation, re-attached by an attacker with a
// second, differently-cased "Payload" member: cosign (JSON v1, last
// case-insensitive match wins) verifies the signed statement, and a
// reader matching names exactly would take the attacker's — a SLSA
// provenance of their choosing. Such an envelope is refused.
func TestAttestationsEnvelopeCaseFold(t *testing.T) {
	f := newFixture(t)
	u := f.up
	h := u.pushImage(t)
	legit := envelope(t, u.inToto(t, statementV01, []v1.Hash{h}, sign.PredicateSPDX, `{"spdxVersion":"SPDX-2.3"}`), f.key)
	evil := u.inToto(t, statementV01, []v1.Hash{h}, sign.PredicateSLSAProvenanceV1,
		`{"buildDefinition":{"externalParameters":{"workflow":{"repository":"https://github.com/our-org/app"}}},"runDetails":{"builder":{"id":"https://github.com/actions/runner/github-hosted"}}}`)
	var env map[string]any
	if err := json.Unmarshal(legit, &env); err != nil {
		t.Fatal(err)
	}
	sigs, _ := json.Marshal(env["signatures"])
	forged := `{"payloadType":"application/vnd.in-toto+json","payload":"` + base64.StdEncoding.EncodeToString(evil) +
		`","Payload":"` + env["payload"].(string) + `","signatures":` + string(sigs) + `}`
	u.attachAtt(t, h, []byte(forged), "spdx")
	atts, _, err := f.verifier().Attestations(context.Background(), u.repo, h, keyPolicy(f.key), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range atts {
		t.Errorf("forged envelope accepted: %s by %s: %s", a.PredicateType, a.Identity, a.Predicate)
	}
	// The legitimate envelope, unchanged, still verifies.
	u.attachAtt(t, h, legit, "spdx")
	if atts, _, err = f.verifier().Attestations(context.Background(), u.repo, h, keyPolicy(f.key), nil); err != nil || len(atts) != 1 || atts[0].PredicateType != sign.PredicateSPDX {
		t.Fatalf("legitimate envelope: %+v %v", atts, err)
	}
}
