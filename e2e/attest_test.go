package e2e

import (
	"bytes"
	"crypto"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	ggcrstatic "github.com/google/go-containerregistry/pkg/v1/static"
	cosignmutate "github.com/sigstore/cosign/v2/pkg/oci/mutate"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"
	"github.com/sigstore/cosign/v2/pkg/oci/static"
	ctypes "github.com/sigstore/cosign/v2/pkg/types"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/dsse"
	"gopkg.in/yaml.v3"

	"github.com/gatehouse/gatehouse/gate/scan/scantest"
)

// Issue 16's acceptance tests: VEX attestations, required SLSA provenance
// and signature-only rules, judged by gatehouse at pull time for the real
// containerd, with docker-registry as the upstream. Every attestation is an
// in-toto statement signed here with a generated key as `cosign attest
// --key --tlog-upload=false` does (a DSSE envelope in a layer of the
// sha256-<hex>.att tag): no network, no transparency log.
//
// Each refusal has an admitted twin that differs in one thing only (the
// signer, the builder, the product named), so the tests prove the
// difference, not a gate that refuses everything.

// Predicate types as `cosign attest --type` writes them.
const (
	predicateOpenVEX = "https://openvex.dev/ns/v0.2.0"
	predicateSLSAv1  = "https://slsa.dev/provenance/v1"
	predicateSLSAv02 = "https://slsa.dev/provenance/v0.2"
)

// Provenance of TestAttestProvenance: what the rule trusts, and what the
// attestations claim.
const (
	trustedBuilders = "https://ci.example/builders/trusted/*"
	trustedSources  = "git+https://git.example/our-org/*"
	goodBuilder     = "https://ci.example/builders/trusted/1"
	evilBuilder     = "https://ci.example/builders/attacker"
	goodSource      = "git+https://git.example/our-org/app@refs/heads/main"
	strangerSource  = "git+https://git.example/other-org/app@refs/heads/main"
)

// TestAttestVEX: an image with a CRITICAL CVE and an OpenVEX attestation
// saying not_affected, signed by the key the rule trusts, is served to
// containerd, with the suppression and its signer in the verdict; the same
// kind of image is refused, the CVE named, when the statement is signed by
// another key, names another image, or was made for another image's digest.
func TestAttestVEX(t *testing.T) {
	requireGatehouse(t)
	reg := StartRegistry(t, RegistryOptions{})
	trusted, untrusted := newCosignKey(t), newCosignKey(t)
	pubPath := writePublicKey(t, trusted)
	signers := &GateSignatures{Identities: []GateSigner{{PublicKey: pubPath}}}

	probe := reg.Push(t, "e2e/probe-alpine", "v1", vulnerableAlpine("probe"))
	gh := startGatehouseWithRules(t, GatehouseConfig{
		Upstreams: []GatehouseUpstream{reg.Upstream()},
		Gate:      &GateConfig{DB: GateDB{UpdateInterval: "0s"}},
		DBArchive: writeTestDB(t),
	}, []attestRule{{
		// The vendor's view: Trivy's findings with their PURLs, served.
		GateRule: GateRule{Name: "probe", Mode: "audit", Repositories: []string{"e2e/probe-*"}},
	}, {
		GateRule: GateRule{Name: "vexed", Repositories: []string{"e2e/vex-*"}, Signatures: signers},
		VEX:      &attestVEX{Attestations: true},
	}, {
		GateRule: GateRule{Name: "default", Mode: "off"},
	}})
	ns := "?ns=" + url.QueryEscape(reg.Host)

	// The PURLs Trivy gives the packages CVEAlpineOpenSSL is found in, as
	// gatehouse's API shows them (libcrypto3 and libssl3, origin openssl):
	// what a vendor names as the image's subcomponents.
	accept := "Accept: application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"
	if get := gh.Do(t, http.MethodGet, "/v2/"+probe.Repo+"/manifests/"+probe.Tag+ns, accept); get.Status != http.StatusOK {
		t.Fatalf("GET %s through gatehouse under an audit rule: %s", probe.Repo, get)
	}
	var probed attestImageDetail
	gh.API(t, "/api/v1/images/"+probe.Digest.String(), &probed)
	var purls []string
	for _, v := range probed.Vulns {
		if v.ID != scantest.CVEAlpineOpenSSL {
			continue
		}
		if !strings.HasPrefix(v.PURL, "pkg:apk/alpine/"+v.PkgName+"@3.5.0-r0") {
			t.Errorf("GET /api/v1/images/%s: %s in %s has purl %q; want pkg:apk/alpine/%s@3.5.0-r0?...", probe.Digest, v.ID, v.PkgName, v.PURL, v.PkgName)
		}
		purls = append(purls, v.PURL)
	}
	if len(purls) != 2 || t.Failed() {
		t.Fatalf("GET /api/v1/images/%s: want %s in libcrypto3 and libssl3, each with its PURL; vulnerabilities: %+v", probe.Digest, scantest.CVEAlpineOpenSSL, probed.Vulns)
	}
	t.Logf("PURLs of %s: %v", scantest.CVEAlpineOpenSSL, purls)

	admitted := reg.Push(t, "e2e/vex-trusted", "v1", vulnerableAlpine("vex-trusted"))
	attest(t, reg, admitted, admitted.Digest, trusted, predicateOpenVEX, openVEX(reg, admitted, purls))

	refused := []struct {
		name string
		img  Pushed
	}{{
		name: "VEX signed by another key",
		img:  reg.Push(t, "e2e/vex-untrusted", "v1", vulnerableAlpine("vex-untrusted")),
	}, {
		name: "VEX for another image",
		img:  reg.Push(t, "e2e/vex-other-product", "v1", vulnerableAlpine("vex-other-product")),
	}, {
		name: "VEX attestation of another digest",
		img:  reg.Push(t, "e2e/vex-copied", "v1", vulnerableAlpine("vex-copied")),
	}}
	// The same statement as the admitted image's, about itself, by the
	// key the rule does not trust.
	attest(t, reg, refused[0].img, refused[0].img.Digest, untrusted, predicateOpenVEX, openVEX(reg, refused[0].img, purls))
	// A trusted attestation of this image whose statement names the
	// admitted image as the product.
	attest(t, reg, refused[1].img, refused[1].img.Digest, trusted, predicateOpenVEX, openVEX(reg, admitted, purls))
	// The admitted image's attestation copied to another image, with the
	// product pointed at this one: signed by the trusted key, but its
	// in-toto subject is the admitted image's digest.
	attest(t, reg, refused[2].img, admitted.Digest, trusted, predicateOpenVEX, openVEX(reg, refused[2].img, purls))

	ctrd := StartContainerd(t)
	ctrd.SetHosts(t, reg.Host, Hosts{Server: gh.URL})

	t.Run("trusted VEX admits", func(t *testing.T) {
		ctrd.MustPull(t, admitted.Ref(reg.Host), PullOptions{})
		ctrd.AssertContent(t, reg.Content(t, admitted.Repo, admitted.Digest, nil))

		var d attestImageDetail
		gh.API(t, "/api/v1/images/"+admitted.Digest.String(), &d)
		if d.Verdict == nil || !d.Verdict.Admitted || d.Verdict.Rule != "vexed" {
			t.Fatalf("GET /api/v1/images/%s: verdict %+v; want admitted by rule vexed", admitted.Digest, d.Verdict)
		}
		t.Logf("verdict.suppressed: %+v", d.Verdict.Suppressed)
		got := map[string]apiSuppression{}
		for _, s := range d.Verdict.Suppressed {
			got[s.PURL] = s
		}
		for _, purl := range purls {
			s, ok := got[purl]
			if !ok {
				t.Errorf("verdict.suppressed has no entry for %s (%s): %+v", purl, scantest.CVEAlpineOpenSSL, d.Verdict.Suppressed)
				continue
			}
			if s.ID != scantest.CVEAlpineOpenSSL || s.Status != "not_affected" || s.Justification != "vulnerable_code_not_in_execute_path" ||
				!strings.Contains(s.Source, trusted.identity) {
				t.Errorf("suppression of %s: %+v; want %s not_affected, vulnerable_code_not_in_execute_path, source naming %s",
					purl, s, scantest.CVEAlpineOpenSSL, trusted.identity)
			}
		}
		// The statement names only CVEAlpineOpenSSL: the MEDIUM busybox
		// finding stays (and lets the image pass, as the rule blocks
		// CRITICAL only).
		if len(d.Verdict.Suppressed) != len(purls) {
			t.Errorf("verdict.suppressed has %d entries; want %d (the two openssl packages only): %+v", len(d.Verdict.Suppressed), len(purls), d.Verdict.Suppressed)
		}
		if !slices.ContainsFunc(d.Vulns, func(v attestVuln) bool { return v.ID == scantest.CVEAlpineBusybox }) {
			t.Errorf("GET /api/v1/images/%s does not list %s, which no statement names: %+v", admitted.Digest, scantest.CVEAlpineBusybox, d.Vulns)
		}
	})

	for _, r := range refused {
		t.Run(r.name+" is refused", func(t *testing.T) {
			res := ctrd.Pull(t, r.img.Ref(reg.Host), PullOptions{})
			if res.Err == nil {
				t.Fatalf("ctr pulled %s, which has %s and no VEX statement the rule accepts", r.img.Ref(reg.Host), scantest.CVEAlpineOpenSSL)
			}
			t.Logf("ctr error line: %s", res.LastLine())
			out := res.Output()
			for _, want := range []string{scantest.CVEAlpineOpenSSL, `"vexed"`, "403"} {
				if !strings.Contains(out, want) {
					t.Errorf("ctr's output does not show %q:\n%s", want, out)
				}
			}
			var d attestImageDetail
			gh.API(t, "/api/v1/images/"+r.img.Digest.String(), &d)
			if d.Verdict == nil || d.Verdict.Admitted || d.Verdict.Reason != "vulnerable" || len(d.Verdict.Suppressed) > 0 {
				t.Errorf("GET /api/v1/images/%s: verdict %+v; want denied as vulnerable, nothing suppressed", r.img.Digest, d.Verdict)
			}
			// Nothing of the refused image reached containerd but the
			// layers it shares with the admitted one.
			objs := reg.Content(t, r.img.Repo, r.img.Digest, nil)
			for _, dgst := range ctrdHave(t, ctrd, objs) {
				if !sharedWith(t, reg, dgst, admitted) {
					t.Errorf("containerd holds %s %s of the refused image", objs[dgst].Kind, dgst)
				}
			}
		})
	}
}

// TestAttestVEXRepository: a rule taking VEX from an OCI repository reads
// it through gatehouse's upstream at start; a CRITICAL CVE its statement
// covers no longer refuses the image it names (the verdict names the
// repository and digest as the source), while its twin, which the
// statement does not name, is refused.
func TestAttestVEXRepository(t *testing.T) {
	requireGatehouse(t)
	reg := StartRegistry(t, RegistryOptions{})
	probe := reg.Push(t, "e2e/probe-alpine", "v1", vulnerableAlpine("probe"))
	named := reg.Push(t, "e2e/vexrepo-named", "v1", vulnerableAlpine("vexrepo-named"))
	twin := reg.Push(t, "e2e/vexrepo-twin", "v1", vulnerableAlpine("vexrepo-twin"))
	rules := []attestRule{{
		GateRule: GateRule{Name: "probe", Mode: "audit", Repositories: []string{"e2e/probe-*"}},
	}, {
		GateRule: GateRule{Name: "vendor", Repositories: []string{"e2e/vexrepo-*"}},
		VEX:      &attestVEX{Repositories: []string{reg.Host + "/e2e/vex-docs:v1"}},
	}, {
		GateRule: GateRule{Name: "default", Mode: "off"},
	}}
	cfg := GatehouseConfig{Upstreams: []GatehouseUpstream{reg.Upstream()}, Gate: &GateConfig{DB: GateDB{UpdateInterval: "0s"}}, DBArchive: writeTestDB(t)}
	gh := startGatehouseWithRules(t, cfg, rules)
	ns := "?ns=" + url.QueryEscape(reg.Host)
	accept := "Accept: application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"
	if get := gh.Do(t, http.MethodGet, "/v2/"+probe.Repo+"/manifests/"+probe.Tag+ns, accept); get.Status != http.StatusOK {
		t.Fatalf("GET %s through gatehouse under an audit rule: %s", probe.Repo, get)
	}
	var probed attestImageDetail
	gh.API(t, "/api/v1/images/"+probe.Digest.String(), &probed)
	var purls []string
	for _, v := range probed.Vulns {
		if v.ID == scantest.CVEAlpineOpenSSL {
			purls = append(purls, v.PURL)
		}
	}
	if len(purls) != 2 {
		t.Fatalf("want the PURLs of %s in two packages: %+v", scantest.CVEAlpineOpenSSL, probed.Vulns)
	}
	// The vendor publishes its statement about the named image, as an
	// artifact whose layer is the document; gatehouse reads it at start.
	doc, err := json.Marshal(openVEX(reg, named, purls))
	if err != nil {
		t.Fatal(err)
	}
	art, err := mutate.Append(empty.Image, mutate.Addendum{Layer: ggcrstatic.NewLayer(doc, "application/vnd.openvex+json")})
	if err != nil {
		t.Fatal(err)
	}
	docs := reg.Push(t, "e2e/vex-docs", "v1", art)
	gh.Restart(t)

	ctrd := StartContainerd(t)
	ctrd.SetHosts(t, reg.Host, Hosts{Server: gh.URL})
	ctrd.MustPull(t, named.Ref(reg.Host), PullOptions{})
	var d attestImageDetail
	gh.API(t, "/api/v1/images/"+named.Digest.String(), &d)
	source := "repository " + reg.Host + "/e2e/vex-docs:v1@" + docs.Digest.String()
	if d.Verdict == nil || !d.Verdict.Admitted || len(d.Verdict.Suppressed) != 2 || d.Verdict.Suppressed[0].Source != source {
		t.Fatalf("GET /api/v1/images/%s: verdict %+v; want admitted with 2 suppressions from %s", named.Digest, d.Verdict, source)
	}
	res := ctrd.Pull(t, twin.Ref(reg.Host), PullOptions{})
	if res.Err == nil || !strings.Contains(res.Output(), scantest.CVEAlpineOpenSSL) {
		t.Fatalf("ctr pull of %s, which the statement does not name: %v\n%s", twin.Ref(reg.Host), res.Err, res.Output())
	}
}

// TestAttestProvenance: a rule requiring SLSA provenance from a trusted
// builder and source serves an image whose provenance (v1 or v0.2) says so,
// signed by the trusted key, and refuses one whose provenance names another
// builder or another source, or is signed by another key, naming the
// provenance and the reason in ctr's error and in the verdict.
func TestAttestProvenance(t *testing.T) {
	requireGatehouse(t)
	reg := StartRegistry(t, RegistryOptions{})
	trusted, untrusted := newCosignKey(t), newCosignKey(t)
	pubPath := writePublicKey(t, trusted)

	gh := startGatehouseWithRules(t, GatehouseConfig{
		Upstreams: []GatehouseUpstream{reg.Upstream()},
		Gate:      &GateConfig{DB: GateDB{UpdateInterval: "0s"}},
		DBArchive: writeTestDB(t),
	}, []attestRule{{
		GateRule: GateRule{Name: "built", Repositories: []string{"e2e/built-*"},
			Signatures: &GateSignatures{Identities: []GateSigner{{PublicKey: pubPath}}}},
		Attestations: &attestRequirements{Provenance: &attestProvenance{
			BuilderIDs:         []string{trustedBuilders},
			SourceRepositories: []string{trustedSources},
		}},
	}, {
		GateRule: GateRule{Name: "default", Mode: "off"},
	}})

	// Clean images: the scan passes them, only the provenance can refuse.
	good := reg.Push(t, "e2e/built-good", "v1", cleanImage("built-good"))
	attest(t, reg, good, good.Digest, trusted, predicateSLSAv1, slsaV1(goodBuilder, goodSource))
	goodV02 := reg.Push(t, "e2e/built-good-v02", "v1", cleanImage("built-good-v02"))
	attest(t, reg, goodV02, goodV02.Digest, trusted, predicateSLSAv02, slsaV02(goodBuilder, goodSource))

	refused := []struct {
		name, repo string
		key        *cosignKey
		predicate  any
		reason     string // after "provenance: "
		found      string // in verdict.attestations[].found; "" when none was accepted
	}{{
		name:      "wrong builder",
		repo:      "e2e/built-evil",
		key:       trusted,
		predicate: slsaV1(evilBuilder, goodSource),
		reason:    `builder "` + evilBuilder + `" is not one of ` + trustedBuilders,
		found:     evilBuilder,
	}, {
		name:      "wrong source",
		repo:      "e2e/built-elsewhere",
		key:       trusted,
		predicate: slsaV1(goodBuilder, strangerSource),
		reason:    "source " + strangerSource + " is not one of " + trustedSources,
		found:     strangerSource,
	}, {
		name:      "signed by another key",
		repo:      "e2e/built-forged",
		key:       untrusted,
		predicate: slsaV1(goodBuilder, goodSource),
		reason:    "no trusted SLSA provenance attestation (1 rejected: " + reasonUntrusted + ")",
	}, {
		name:   "no provenance",
		repo:   "e2e/built-unattested",
		reason: "no SLSA provenance attestation found",
	}}
	pushed := make([]Pushed, len(refused))
	for i, r := range refused {
		pushed[i] = reg.Push(t, r.repo, "v1", cleanImage(r.repo))
		if r.key != nil {
			attest(t, reg, pushed[i], pushed[i].Digest, r.key, predicateSLSAv1, r.predicate)
		}
	}

	ctrd := StartContainerd(t)
	ctrd.SetHosts(t, reg.Host, Hosts{Server: gh.URL})

	for _, p := range []Pushed{good, goodV02} {
		t.Run("trusted builder admitted "+p.Repo, func(t *testing.T) {
			ctrd.MustPull(t, p.Ref(reg.Host), PullOptions{})
			ctrd.AssertContent(t, reg.Content(t, p.Repo, p.Digest, nil))
			var d attestImageDetail
			gh.API(t, "/api/v1/images/"+p.Digest.String(), &d)
			if d.Verdict == nil || !d.Verdict.Admitted || d.Verdict.Rule != "built" {
				t.Fatalf("GET /api/v1/images/%s: verdict %+v; want admitted by rule built", p.Digest, d.Verdict)
			}
			if c := d.Verdict.Attestations; len(c) != 1 || c[0].Requirement != "provenance" || !c[0].Passed ||
				!strings.Contains(c[0].Found, goodBuilder) || !strings.Contains(c[0].Found, trusted.identity) {
				t.Errorf("verdict.attestations %+v; want one passed provenance check naming builder %s and signer %s", c, goodBuilder, trusted.identity)
			}
		})
	}

	for i, r := range refused {
		p := pushed[i]
		t.Run(r.name+" refused", func(t *testing.T) {
			res := ctrd.Pull(t, p.Ref(reg.Host), PullOptions{})
			if res.Err == nil {
				t.Fatalf("ctr pulled %s (%s): the provenance requirement let it through", p.Ref(reg.Host), r.name)
			}
			t.Logf("ctr error line: %s", res.LastLine())
			want := `denied by rule "built": attestation required: provenance: ` + r.reason
			out := res.Output()
			for _, w := range []string{want, "403"} {
				if !strings.Contains(out, w) {
					t.Errorf("ctr's output does not show %q:\n%s", w, out)
				}
			}
			var d attestImageDetail
			gh.API(t, "/api/v1/images/"+p.Digest.String(), &d)
			if d.Verdict == nil || d.Verdict.Admitted || d.Verdict.Reason != "attestation" || !strings.Contains(d.Verdict.Message, want) {
				t.Errorf("GET /api/v1/images/%s: verdict %+v; want denied for attestation with %q", p.Digest, d.Verdict, want)
			} else if c := d.Verdict.Attestations; len(c) != 1 || c[0].Requirement != "provenance" || c[0].Passed ||
				c[0].Reason != r.reason || !strings.Contains(c[0].Found, r.found) || (r.found == "") != (c[0].Found == "") {
				t.Errorf("verdict.attestations %+v; want one failed provenance check: reason %q, found naming %q", c, r.reason, r.found)
			}
			objs := reg.Content(t, p.Repo, p.Digest, nil)
			for _, dgst := range ctrdHave(t, ctrd, objs) {
				if !sharedWith(t, reg, dgst, good) {
					t.Errorf("containerd holds %s %s of the refused image", objs[dgst].Kind, dgst)
				}
			}
		})
	}
}

// TestAttestSignatureOnly: with no vulnerability DB loaded, a rule with
// vulnerabilities: off serves a signed image and refuses an unsigned one
// for its signature; the same signed image under a rule that scans is
// refused, which proves the DB really is missing.
func TestAttestSignatureOnly(t *testing.T) {
	requireGatehouse(t)
	reg := StartRegistry(t, RegistryOptions{})
	trusted := newCosignKey(t)
	pubPath := writePublicKey(t, trusted)
	required := &GateSignatures{Required: true, Identities: []GateSigner{{PublicKey: pubPath}}}

	// No DBArchive, no updates: no vulnerability DB, ever.
	gh := startGatehouseWithRules(t, GatehouseConfig{
		Upstreams: []GatehouseUpstream{reg.Upstream()},
		Gate:      &GateConfig{DB: GateDB{UpdateInterval: "0s"}},
	}, []attestRule{{
		GateRule:        GateRule{Name: "signed-only", Repositories: []string{"e2e/sigonly-*"}, Signatures: required},
		Vulnerabilities: "off",
	}, {
		GateRule: GateRule{Name: "scanned", Repositories: []string{"e2e/scanned-*"}, Signatures: required},
	}, {
		GateRule: GateRule{Name: "default", Mode: "off"},
	}})
	var pol struct {
		DBVersion string `json:"dbVersion"`
	}
	gh.API(t, "/api/v1/policy", &pol)
	if pol.DBVersion != "" {
		t.Fatalf("GET /api/v1/policy: dbVersion %q; want none loaded", pol.DBVersion)
	}

	signed := reg.Push(t, "e2e/sigonly-signed", "v1", cleanImage("sigonly-signed"))
	signLegacy(t, reg, signed, trusted)
	unsigned := reg.Push(t, "e2e/sigonly-unsigned", "v1", cleanImage("sigonly-unsigned"))
	scanned := reg.Push(t, "e2e/scanned-signed", "v1", cleanImage("scanned-signed"))
	signLegacy(t, reg, scanned, trusted)

	ctrd := StartContainerd(t)
	ctrd.SetHosts(t, reg.Host, Hosts{Server: gh.URL})

	t.Run("signed image served without a DB", func(t *testing.T) {
		ctrd.MustPull(t, signed.Ref(reg.Host), PullOptions{})
		ctrd.AssertContent(t, reg.Content(t, signed.Repo, signed.Digest, nil))
		var d attestImageDetail
		gh.API(t, "/api/v1/images/"+signed.Digest.String(), &d)
		if d.Verdict == nil || !d.Verdict.Admitted || d.Verdict.Rule != "signed-only" || d.Verdict.ScannedAt != "" || d.Verdict.DBVersion != "" {
			t.Fatalf("GET /api/v1/images/%s: verdict %+v; want admitted by rule signed-only, not scanned", signed.Digest, d.Verdict)
		}
		if s := d.Verdict.Signature; s == nil || !s.Verified || s.Identity != trusted.identity {
			t.Errorf("GET /api/v1/images/%s: verdict.signature %+v; want verified by %s", signed.Digest, s, trusted.identity)
		}
	})

	t.Run("unsigned image refused", func(t *testing.T) {
		res := ctrd.Pull(t, unsigned.Ref(reg.Host), PullOptions{})
		if res.Err == nil {
			t.Fatalf("ctr pulled the unsigned %s", unsigned.Ref(reg.Host))
		}
		t.Logf("ctr error line: %s", res.LastLine())
		want := `denied by rule "signed-only": signature required: ` + reasonNoSignature
		if out := res.Output(); !strings.Contains(out, want) || !strings.Contains(out, "403") {
			t.Errorf("ctr's output does not show 403 and %q:\n%s", want, out)
		}
		var d attestImageDetail
		gh.API(t, "/api/v1/images/"+unsigned.Digest.String(), &d)
		if d.Verdict == nil || d.Verdict.Admitted || d.Verdict.Reason != "signature" || d.Verdict.Rule != "signed-only" {
			t.Errorf("GET /api/v1/images/%s: verdict %+v; want denied for its signature by rule signed-only", unsigned.Digest, d.Verdict)
		}
	})

	t.Run("a scanning rule refuses the signed image", func(t *testing.T) {
		res := ctrd.Pull(t, scanned.Ref(reg.Host), PullOptions{})
		if res.Err == nil {
			t.Fatalf("ctr pulled %s under a rule that scans, with no vulnerability DB loaded", scanned.Ref(reg.Host))
		}
		t.Logf("ctr error line: %s", res.LastLine())
		if out := res.Output(); !strings.Contains(out, "no vulnerability database loaded") {
			t.Errorf("ctr's output does not say that no vulnerability DB is loaded:\n%s", out)
		}
	})
}

// attestRule is a rule of gate.policy.rules with issue 16's sections,
// which GateRule does not have.
type attestRule struct {
	GateRule        `yaml:",inline"`
	Vulnerabilities string              `yaml:"vulnerabilities,omitempty"` // on (default) or off
	VEX             *attestVEX          `yaml:"vex,omitempty"`
	Attestations    *attestRequirements `yaml:"attestations,omitempty"`
	StaleDB         string              `yaml:"staleDB,omitempty"` // deny (default) or warn
}

// attestVEX is a rule's vex section.
type attestVEX struct {
	Files        []string `yaml:"files,omitempty"`
	Repositories []string `yaml:"repositories,omitempty"`
	Attestations bool     `yaml:"attestations,omitempty"`
}

// attestRequirements is a rule's attestations section.
type attestRequirements struct {
	Provenance *attestProvenance `yaml:"provenance,omitempty"`
}

// attestProvenance is attestations.provenance.
type attestProvenance struct {
	BuilderIDs         []string `yaml:"builderIds"`
	SourceRepositories []string `yaml:"sourceRepositories,omitempty"`
}

// startGatehouseWithRules is StartGatehouse with rules the harness's
// GateRule cannot express: gatehouse starts with cfg (cfg.Gate's rules are
// replaced by one rule in mode off), then is stopped, its config file gets
// rules as gate.policy.rules, and it is started again on the same port and
// data directory (the DB imported before the first start stays).
func startGatehouseWithRules(t *testing.T, cfg GatehouseConfig, rules []attestRule) *Gatehouse {
	t.Helper()
	gate := *cfg.Gate
	gate.Policy = GatePolicy{Rules: []GateRule{{Name: "default", Mode: "off"}}}
	cfg.Gate = &gate
	gh := StartGatehouse(t, cfg)
	gh.Stop(t)

	b, err := os.ReadFile(gh.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	g, ok := doc["gate"].(map[string]any)
	if !ok {
		t.Fatalf("%s has no gate section:\n%s", gh.ConfigPath, b)
	}
	g["policy"] = map[string]any{"rules": rules}
	if b, err = yaml.Marshal(doc); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(gh.ConfigPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	gh.Start(t)
	return gh
}

// writePublicKey writes k's public key as a PEM file for a rule's
// signatures.identities and returns its path.
func writePublicKey(t *testing.T, k *cosignKey) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "trusted.pub")
	if err := os.WriteFile(path, k.pubPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// vulnerableAlpine is scantest's vulnerable Alpine image (CVEAlpineOpenSSL,
// CRITICAL, in libcrypto3 and libssl3) with one more layer naming it: a
// digest of its own, the same packages.
func vulnerableAlpine(label string) v1.Image {
	return scantest.OnBase(scantest.VulnerableAlpine(), scantest.Files{"etc/e2e-image": []byte(label + "\n")})
}

// attest attaches to p, as `cosign attest --key --tlog-upload=false
// --type <predicateType>` does, an in-toto statement about subject (p's
// digest, unless the test forges one) with predicate, signed by k: a DSSE
// envelope in a layer of the sha256-<hex>.att tag in p's repository.
func attest(t *testing.T, reg *Registry, p Pushed, subject v1.Hash, k *cosignKey, predicateType string, predicate any) {
	t.Helper()
	ref := reg.Repo(t, p.Repo).Digest(p.Digest.String())
	stmt, err := json.Marshal(map[string]any{
		"_type":         "https://in-toto.io/Statement/v0.1", // what cosign v2 writes
		"subject":       []any{map[string]any{"name": ref.Context().Name(), "digest": map[string]string{subject.Algorithm: subject.Hex}}},
		"predicateType": predicateType,
		"predicate":     predicate,
	})
	if err != nil {
		t.Fatal(err)
	}
	signer, err := signature.LoadECDSASigner(k.priv, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	env, err := dsse.WrapSigner(signer, ctypes.IntotoPayloadType).SignMessage(bytes.NewReader(stmt))
	if err != nil {
		t.Fatal(err)
	}
	att, err := static.NewAttestation(env,
		static.WithLayerMediaType(ctypes.DssePayloadType),
		static.WithAnnotations(map[string]string{"predicateType": predicateType}))
	if err != nil {
		t.Fatal(err)
	}
	opts := []ociremote.Option{ociremote.WithRemoteOptions(reg.RemoteOptions()...)}
	se, err := ociremote.SignedEntity(ref, opts...)
	if err != nil {
		t.Fatalf("read %s for attesting: %v", ref, err)
	}
	if se, err = cosignmutate.AttachAttestationToEntity(se, att); err != nil {
		t.Fatal(err)
	}
	if err := ociremote.WriteAttestations(ref.Context(), se, opts...); err != nil {
		t.Fatalf("push the attestation of %s: %v", ref, err)
	}
}

// openVEX is an OpenVEX document saying that product, an image of reg, is
// not affected by CVEAlpineOpenSSL in the packages purls, because the
// vulnerable code is never run. The product is the image's PURL as Trivy
// and the OpenVEX spec write it: pkg:oci/<last path element>@<digest>
// ?repository_url=<registry>/<repository>.
func openVEX(reg *Registry, product Pushed, purls []string) map[string]any {
	name := product.Repo[strings.LastIndex(product.Repo, "/")+1:]
	id := "pkg:oci/" + name + "@" + url.PathEscape(product.Digest.String()) +
		"?repository_url=" + url.QueryEscape(reg.Host+"/"+product.Repo)
	var subs []any
	for _, p := range purls {
		subs = append(subs, map[string]string{"@id": p})
	}
	return map[string]any{
		"@context":  "https://openvex.dev/ns/v0.2.0",
		"@id":       "https://vex.example/e2e/" + name,
		"author":    "gatehouse e2e",
		"timestamp": "2025-06-01T00:00:00Z",
		"version":   1,
		"statements": []any{map[string]any{
			"vulnerability": map[string]string{"name": scantest.CVEAlpineOpenSSL},
			"products":      []any{map[string]any{"@id": id, "subcomponents": subs}},
			"status":        "not_affected",
			"justification": "vulnerable_code_not_in_execute_path",
		}},
	}
}

// slsaV1 is a SLSA v1 provenance predicate by builder, built from source.
func slsaV1(builder, source string) map[string]any {
	return map[string]any{
		"buildDefinition": map[string]any{
			"buildType":          "https://ci.example/buildtypes/container/v1",
			"externalParameters": map[string]any{"source": source},
			"resolvedDependencies": []any{map[string]any{
				"uri":    source,
				"digest": map[string]string{"gitCommit": strings.Repeat("a", 40)},
			}},
		},
		"runDetails": map[string]any{
			"builder":  map[string]any{"id": builder},
			"metadata": map[string]any{"invocationId": "https://ci.example/runs/1"},
		},
	}
}

// slsaV02 is a SLSA v0.2 provenance predicate by builder, built from source.
func slsaV02(builder, source string) map[string]any {
	return map[string]any{
		"builder":    map[string]any{"id": builder},
		"buildType":  "https://ci.example/buildtypes/container/v1",
		"invocation": map[string]any{"configSource": map[string]any{"uri": source, "entryPoint": "build.yaml"}},
		"materials":  []any{map[string]any{"uri": source, "digest": map[string]string{"sha1": strings.Repeat("a", 40)}}},
	}
}

// attestImageDetail is what these tests read of GET /api/v1/images/<digest>.
type attestImageDetail struct {
	Verdict *struct {
		Admitted     bool                  `json:"admitted"`
		Rule         string                `json:"rule"`
		Reason       string                `json:"reason"`
		Message      string                `json:"message"`
		DBVersion    string                `json:"dbVersion"`
		ScannedAt    string                `json:"scannedAt"` // absent when not scanned
		Signature    *apiSignature         `json:"signature"`
		Attestations []apiAttestationCheck `json:"attestations"`
		Suppressed   []apiSuppression      `json:"suppressed"`
	} `json:"verdict"`
	Vulns []attestVuln `json:"vulnerabilities"`
}

// attestVuln is a vulnerability of the API with its package URL.
type attestVuln struct {
	ID      string `json:"id"`
	PkgName string `json:"pkgName"`
	PURL    string `json:"purl"`
}

// apiAttestationCheck is one entry of verdict.attestations.
type apiAttestationCheck struct {
	Requirement string `json:"requirement"`
	Passed      bool   `json:"passed"`
	Found       string `json:"found"`
	Reason      string `json:"reason"`
}

// apiSuppression is one entry of verdict.suppressed.
type apiSuppression struct {
	ID            string `json:"id"`
	PkgName       string `json:"pkgName"`
	PURL          string `json:"purl"`
	Status        string `json:"status"`
	Justification string `json:"justification"`
	Source        string `json:"source"`
}
