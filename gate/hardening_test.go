package gate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/gate/policy"
	"github.com/gatehouse/gatehouse/metrics"
)

// Each test here closes one way past the gate that an attacker who can push
// any image upstream (or an operator's ordinary change) used to have.

// relabel rewrites a fixture image's manifest as an OCI manifest with the
// given artifactType, config media type and layer media type ("" keeps
// each), and returns it as a new subject.
func relabel(t *testing.T, s Subject, artifactType, configType, layerType string) Subject {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(s.Manifest, &m); err != nil {
		t.Fatal(err)
	}
	m["mediaType"] = "application/vnd.oci.image.manifest.v1+json"
	if artifactType != "" {
		m["artifactType"] = artifactType
	}
	if configType != "" {
		m["config"].(map[string]any)["mediaType"] = configType
	}
	for _, l := range m["layers"].([]any) {
		mt := layerType
		if mt == "" {
			mt = "application/vnd.oci.image.layer.v1.tar+gzip"
		}
		l.(map[string]any)["mediaType"] = mt
	}
	raw, _ := json.Marshal(m)
	d, _, _ := v1.SHA256(strings.NewReader(string(raw)))
	s.Manifest, s.Digest, s.MediaType = raw, d, "application/vnd.oci.image.manifest.v1+json"
	return s
}

func layerDigests(t testing.TB, s Subject) []v1.Hash {
	t.Helper()
	m, err := v1.ParseManifest(strings.NewReader(string(s.Manifest)))
	if err != nil {
		t.Fatal(err)
	}
	var ds []v1.Hash
	for _, l := range m.Layers {
		ds = append(ds, l.Digest)
	}
	return ds
}

func (f *fixture) blobOK(t *testing.T, repo string, d v1.Hash) bool {
	t.Helper()
	ok, err := f.g.BlobAllowed(context.Background(), "up.example", repo, d)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

// Hole 1: a runnable image is an image whatever its labels say.
func TestLabelsDoNotMakeAnImageAnArtifact(t *testing.T) {
	for _, tc := range []struct{ name, artifactType, configType, layerType string }{
		{"artifactType spdx", "application/spdx+json", "", ""},
		{"artifactType helm", "application/vnd.cncf.helm.config.v1+json", "", ""},
		{"helm config type", "", "application/vnd.cncf.helm.config.v1+json", ""},
		{"empty config type", "", "application/vnd.oci.empty.v1+json", ""},
		{"docker layers", "application/spdx+json", "", "application/vnd.docker.image.rootfs.diff.tar.gzip"},
		{"zstd layers", "application/spdx+json", "", "application/vnd.oci.image.layer.v1.tar+zstd"},
		{"non-distributable", "application/spdx+json", "", "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"},
		{"upper case", "application/spdx+json", "", "Application/VND.OCI.image.layer.v1.tar+gzip"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, policyYAML)
			f.scanner.vulns["up.example/team/app"] = []Vuln{critical}
			s := relabel(t, f.image(t, "team/app"), tc.artifactType, tc.configType, tc.layerType)
			v, err := f.g.Check(context.Background(), s)
			if err != nil || v.Admitted || v.Kind != "image" || !strings.Contains(v.Message, critical.ID) {
				t.Fatalf("relabelled vulnerable image: %+v %v", v, err)
			}
			if f.scanner.scans.Load() != 1 {
				t.Fatal("relabelled image not scanned")
			}
			if f.blobOK(t, "team/app", layerDigests(t, s)[0]) {
				t.Fatal("layer of the relabelled denied image allowed")
			}
		})
	}
}

func TestIsImageLayer(t *testing.T) {
	for mt, want := range map[string]bool{
		"application/vnd.oci.image.layer.v1.tar":                                  true,
		"application/vnd.oci.image.layer.v1.tar+gzip":                             true,
		"application/vnd.oci.image.layer.v1.tar+zstd":                             true,
		"application/vnd.oci.image.layer.v1.tar+gzip+encrypted":                   true,
		"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip":            true,
		"application/vnd.docker.image.rootfs.diff.tar.gzip":                       true,
		"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip":               true,
		" application/vnd.oci.image.layer.v1.tar+gzip; charset=x":                 true,
		"APPLICATION/VND.DOCKER.IMAGE.ROOTFS.DIFF.TAR":                            true,
		"application/vnd.dev.cosign.simplesigning.v1+json":                        false,
		"application/vnd.cncf.helm.chart.content.v1.tar+gzip":                     false,
		"application/spdx+json":                                                   false,
		"application/vnd.dev.sigstore.bundle.v0.3+json":                           false,
		"application/vnd.oci.image.config.v1+json":                                false,
		"application/vnd.aquasec.trivy.db.layer.v1.tar+gzip":                      false,
		"application/vnd.oci.image.manifest.v1+json":                              false,
		"application/vnd.in-toto+json":                                            false,
		"application/vnd.docker.container.image.v1+json":                          false,
		"application/vnd.oci.empty.v1+json":                                       false,
		"application/vnd.cncf.notary.signature":                                   false,
		"application/octet-stream":                                                false,
		"":                                                                        false,
		"application/vnd.oci.image.layer":                                         false,
		"application/vnd.docker.image.rootfs":                                     false,
		"application/vnd.docker.distribution.manifest.v2+json":                    false,
		"application/vnd.oci.image.index.v1+json":                                 false,
		"application/vnd.dev.cosign.artifact.sig.v1+json":                         false,
		"application/vnd.cyclonedx+json":                                          false,
		"application/vnd.oci.image.layer.v1.tar+gzip\x00":                         true,
		"application/vnd.oci.image.layerx":                                        false,
		"application/vnd.docker.image.rootfs.diff.tar.zstd":                       true,
		"application/vnd.oci.image.layer.nondistributable.v1.tar":                 true,
		"application/vnd.oci.image.layer.nondistributable.v1.tar+zstd":            true,
		"application/vnd.docker.image.rootfs.diff.tar":                            true,
		"application/vnd.docker.image.rootfs.foreign.diff.tar":                    true,
		"application/vnd.oci.image.layer.v1.tar+gzip+encrypted; annotations=true": true,
	} {
		if got := IsImageLayer(mt); got != want {
			t.Errorf("IsImageLayer(%q) = %v, want %v", mt, got, want)
		}
	}
}

// artifactListing is a pass-through artifact (an "SBOM") whose layers are
// the given blobs.
func artifactListing(repo string, blobs []v1.Hash) Subject {
	var ls []string
	for _, d := range blobs {
		ls = append(ls, fmt.Sprintf(`{"mediaType":"application/spdx+json","digest":%q,"size":1}`, d))
	}
	raw := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/spdx+json",` +
		`"config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},` +
		`"layers":[` + strings.Join(ls, ",") + `]}`
	d, _, _ := v1.SHA256(strings.NewReader(raw))
	return Subject{Upstream: "up.example", Repo: repo, Digest: d, MediaType: "application/vnd.oci.image.manifest.v1+json", Manifest: []byte(raw)}
}

// Hole 1: an artifact listing a denied image's layers opens none of them,
// in any repository; a genuine artifact's own blobs are served.
func TestArtifactDoesNotOpenDeniedLayers(t *testing.T) {
	f := newFixture(t, policyYAML)
	f.scanner.vulns["up.example/team/bad"] = []Vuln{critical}
	bad := f.image(t, "team/bad")
	if v, err := f.g.Check(context.Background(), bad); err != nil || v.Admitted {
		t.Fatalf("vulnerable image: %+v %v", v, err)
	}
	layers := layerDigests(t, bad)
	for _, repo := range []string{"team/bad", "evil/sbom"} {
		a := artifactListing(repo, layers)
		if v, err := f.g.Check(context.Background(), a); err != nil || !v.Admitted || v.Kind != "artifact" {
			t.Fatalf("%s: artifact: %+v %v", repo, v, err)
		}
		for _, r := range []string{"team/bad", "evil/sbom", "other/repo"} {
			if f.blobOK(t, r, layers[0]) {
				t.Errorf("layer of the denied image served through %s after an artifact in %s listed it", r, repo)
			}
		}
	}
	// A genuine SBOM: its own blob is served in its repository (only).
	sbomBlob := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("5", 64)}
	sbom := artifactListing("team/good", []v1.Hash{sbomBlob})
	if v, err := f.g.Check(context.Background(), sbom); err != nil || !v.Admitted {
		t.Fatalf("sbom: %+v %v", v, err)
	}
	if !f.blobOK(t, "team/good", sbomBlob) {
		t.Error("the SBOM's blob refused in its repository")
	}
	if f.blobOK(t, "elsewhere/x", sbomBlob) {
		t.Error("an artifact's blob served through another repository")
	}
	// An admitted image built on the denied one's first layer (the layer
	// above it fixes the package) gets it in its own repository; other
	// repositories still do not.
	shared := f.imageOn(t, "team/fixed", bad, 0)
	if v, err := f.g.Check(context.Background(), shared); err != nil || !v.Admitted {
		t.Fatalf("image sharing the layer: %+v %v", v, err)
	}
	if !f.blobOK(t, "team/fixed", layers[0]) {
		t.Error("a layer of an admitted image refused in its own repository because a denied image also lists it")
	}
	if f.blobOK(t, "evil/sbom", layers[0]) {
		t.Error("the denied image's layer served through another repository")
	}
}

// imageOn builds an image in repo on layer i of base's image (config
// diff_ids right), with one layer of its own.
func (f *fixture) imageOn(t testing.TB, repo string, base Subject, i int) Subject {
	t.Helper()
	layer := f.layerOf(t, base, i)
	own, err := random.Layer(500, types.OCILayer)
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer, own)
	if err != nil {
		t.Fatal(err)
	}
	return f.subject(repo, img)
}

// layerOf returns layer i of a fixture image, from the fixture's blobs.
func (f *fixture) layerOf(t testing.TB, s Subject, i int) v1.Layer {
	t.Helper()
	d := layerDigests(t, s)[i]
	f.blobs.mu.Lock()
	b := f.blobs.blobs[d]
	f.blobs.mu.Unlock()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	if ld, _ := l.Digest(); ld != d {
		t.Fatalf("layer %d rebuilt as %s, want %s", i, ld, d)
	}
	return l
}

// An image may not list a denied image's layer under another diffID: a
// scan skips a layer whose declared diffID it has analysed before, so such
// an image is admitted without the layer being read; the layer stays
// refused. And an image whose config does not declare one diffID per
// layer is not judged at all (no runtime unpacks it).
func TestLayerClaimedUnderAnotherDiffID(t *testing.T) {
	f := newFixture(t, policyYAML)
	f.scanner.vulns["up.example/team/bad"] = []Vuln{critical}
	bad := f.image(t, "team/bad")
	if v, _ := f.g.Check(context.Background(), bad); v == nil || v.Admitted {
		t.Fatal("vulnerable image admitted")
	}
	denied := layerDigests(t, bad)[0]
	// evil/y: a clean image whose first layer entry is swapped for the
	// denied layer, its config still naming the clean layer's diffID.
	evil := f.image(t, "evil/y")
	var m map[string]any
	json.Unmarshal(evil.Manifest, &m)
	var badm v1.Manifest
	json.Unmarshal(bad.Manifest, &badm)
	l0 := m["layers"].([]any)[0].(map[string]any)
	l0["digest"], l0["size"] = denied.String(), badm.Layers[0].Size
	evil.Manifest, _ = json.Marshal(m)
	evil.Digest, _, _ = v1.SHA256(bytes.NewReader(evil.Manifest))
	if v, err := f.g.Check(context.Background(), evil); err != nil || !v.Admitted {
		t.Fatalf("the fake scanner reads no diffIDs, so evil/y is admitted here: %+v %v", v, err)
	}
	if f.blobOK(t, "evil/y", denied) {
		t.Fatal("a denied image's layer served through an image that lists it under another diffID")
	}
	// One layer more than the config declares: refused, nothing opened.
	json.Unmarshal(evil.Manifest, &m)
	m["layers"] = append(m["layers"].([]any), map[string]any{"mediaType": string(types.OCILayer), "digest": denied.String(), "size": badm.Layers[0].Size})
	evil.Manifest, _ = json.Marshal(m)
	evil.Digest, _, _ = v1.SHA256(bytes.NewReader(evil.Manifest))
	if v, err := f.g.Check(context.Background(), evil); err == nil || !strings.Contains(err.Error(), "rootfs.diff_ids") {
		t.Fatalf("a manifest with more layers than diff_ids: %+v %v", v, err)
	}
}

// Hole 1: passArtifactTypes is part of every rule's hash.
func TestPassArtifactTypesInRuleHash(t *testing.T) {
	rules := []config.Rule{{Name: "r", Mode: config.ModeEnforce, Block: []string{"CRITICAL"}}}
	a := policy.New(rules, "application/spdx+json").Match("u", "r")
	b := policy.New(rules, "application/spdx+json", "application/vnd.oci.image.config.v1+json").Match("u", "r")
	if a.Hash == b.Hash {
		t.Fatal("rule hash ignores passArtifactTypes")
	}
	if c := policy.New(rules, "application/spdx+json").Match("u", "other"); c.Hash == policy.New(rules).Match("u", "other").Hash {
		t.Fatal("the built-in default rule's hash ignores passArtifactTypes")
	}
}

// ruleSigs answers per rule, as identities differ per rule.
type ruleSigs struct {
	mu    sync.Mutex
	rules map[string]*SignatureResult
	calls map[string]int
	index map[string]*v1.Hash // last index seen, per repository
}

func (r *ruleSigs) Verify(ctx context.Context, up, repo string, d v1.Hash, rule string, index *v1.Hash) (*SignatureResult, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls[rule]++
	r.index[repo] = index
	if index != nil {
		if res, ok := r.rules[rule+"@"+index.String()]; ok {
			return res, nil
		}
	}
	if res, ok := r.rules[rule]; ok {
		return res, nil
	}
	return &SignatureResult{Reason: "no signature found"}, nil
}

func newRuleSigs() *ruleSigs {
	return &ruleSigs{rules: map[string]*SignatureResult{}, calls: map[string]int{}, index: map[string]*v1.Hash{}}
}

const twoKeysPolicy = `
upstreams: [{name: up.example}]
gate:
  policy:
    rules:
      - name: team-a
        repositories: ["a/*"]
        signatures: {required: true, identities: [{publicKey: "-----BEGIN PUBLIC KEY-----\nA\n-----END PUBLIC KEY-----"}]}
      - name: team-b
        repositories: ["b/*"]
        signatures: {required: true, identities: [{publicKey: "-----BEGIN PUBLIC KEY-----\nB\n-----END PUBLIC KEY-----"}]}
      - name: default
`

// Hole 2: re-evaluation never reuses a signature result verified under
// another rule; each repository keeps its own verdict across a DB update.
func TestReevaluateKeepsEachRulesSignature(t *testing.T) {
	sigs := newRuleSigs()
	sigs.rules["team-a"] = &SignatureResult{Verified: true, Format: "legacy-tag", Identity: "key=A"}
	f := newFixtureWith(t, twoKeysPolicy, sigs)
	s := f.image(t, "a/app")
	inB := s
	inB.Repo = "b/app"
	if v, err := f.g.Check(context.Background(), s); err != nil || !v.Admitted {
		t.Fatalf("a/app signed by A: %+v %v", v, err)
	}
	if v, err := f.g.Check(context.Background(), inB); err != nil || v.Admitted || !strings.Contains(v.Message, "signature required") {
		t.Fatalf("b/app not signed by B: %+v %v", v, err)
	}
	f.scanner.mu.Lock()
	f.scanner.db = "db-2"
	f.scanner.mu.Unlock()
	if _, err := f.g.Reevaluate(context.Background()); err != nil {
		t.Fatal(err)
	}
	if v, err := f.g.Check(context.Background(), s); err != nil || !v.Admitted || v.DBVersion != "db-2" {
		t.Fatalf("a/app after the DB update: %+v %v", v, err)
	}
	if v, err := f.g.Check(context.Background(), inB); err != nil || v.Admitted {
		t.Fatalf("b/app after the DB update: %+v %v", v, err)
	}
	if !f.blobOK(t, "a/app", layerDigests(t, s)[0]) || f.blobOK(t, "b/app", layerDigests(t, s)[0]) {
		t.Fatal("blobs do not follow each repository's verdict")
	}
}

// Hole 3: the rule hash covers the key's bytes, not its file name: a key
// replaced under the same path (and a restart) judges every image again.
func TestRotatedKeyFileRejudges(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "cosign.pub")
	root := filepath.Join(dir, "trusted_root.json")
	write := func(k, r string) *config.Config {
		t.Helper()
		os.WriteFile(key, []byte("-----BEGIN PUBLIC KEY-----\n"+k+"\n-----END PUBLIC KEY-----\n"), 0o600)
		os.WriteFile(root, []byte(r), 0o600)
		cfg, err := config.Parse([]byte(fmt.Sprintf(`
upstreams: [{name: up.example}]
gate:
  policy:
    rules:
      - name: signed
        signatures: {required: true, trustedRoot: %q, identities: [{publicKey: %q}]}
`, root, key)))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	sigs := newRuleSigs()
	sigs.rules["signed"] = &SignatureResult{Verified: true, Format: "legacy-tag", Identity: "key=old"}
	f := newFixtureWith(t, "upstreams: [{name: up.example}]", sigs)
	f.g.Close()
	f.open(t, write("OLD", "{}"))
	s := f.image(t, "team/app")
	if v, err := f.g.Check(context.Background(), s); err != nil || !v.Admitted {
		t.Fatalf("signed with the old key: %+v %v", v, err)
	}
	hashOld := f.g.Policy().Match("up.example", "team/app").Hash
	for _, tc := range []struct{ name, key, root string }{{"key", "NEW", "{}"}, {"trusted root", "NEW", `{"x":1}`}} {
		f.g.Close()
		sigs.mu.Lock()
		sigs.rules["signed"] = &SignatureResult{Reason: "signed by an untrusted identity"}
		sigs.mu.Unlock()
		f.open(t, write(tc.key, tc.root))
		if f.g.Policy().Match("up.example", "team/app").Hash == hashOld {
			t.Fatalf("%s replaced: the rule hash did not change", tc.name)
		}
		hashOld = f.g.Policy().Match("up.example", "team/app").Hash
		if f.blobOK(t, "team/app", layerDigests(t, s)[0]) {
			t.Fatalf("%s replaced: a blob admitted under the old one is still served", tc.name)
		}
		if v, err := f.g.Check(context.Background(), s); err != nil || v.Admitted {
			t.Fatalf("%s replaced: the image signed with the old one is served: %+v %v", tc.name, v, err)
		}
	}
}

// Hole 4: a rule naming an upstream by an alias applies to it.
func TestRuleUpstreamAlias(t *testing.T) {
	cfg, err := config.Parse([]byte(`
upstreams: [{name: up.example, aliases: [mirror.example]}]
gate:
  policy:
    rules:
      - {name: strict, upstreams: [MIRROR.example], block: [CRITICAL]}
      - {name: lax, mode: audit}
`))
	if err != nil {
		t.Fatal(err)
	}
	if r := policy.New(cfg.Gate.Policy.Rules).Match("up.example", "team/app"); r.Name != "strict" {
		t.Fatalf("request to up.example matched rule %q, want the rule naming its alias", r.Name)
	}
}

// Hole 5: an index published in another repository says nothing of this
// repository's images, and a denial reached through an index lookup is
// not stored.
func TestIndexSignatureCannotBePoisoned(t *testing.T) {
	sigs := newRuleSigs()
	f := newFixtureWith(t, sigPolicy, sigs)
	s := f.image(t, "signed/app")
	index := func(repo string, fill byte) Subject {
		return Subject{Upstream: "up.example", Repo: repo, Digest: v1.Hash{Algorithm: "sha256", Hex: strings.Repeat(string(fill), 64)},
			MediaType: "application/vnd.oci.image.index.v1+json",
			Manifest:  []byte(`{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + s.Digest.String() + `","size":1}]}`)}
	}
	victim, evil, unsigned := index("signed/app", 'a'), index("evil/app", 'e'), index("signed/app", 'f')
	sigs.rules["signed@"+victim.Digest.String()] = &SignatureResult{Verified: true, Format: "bundle", Digest: victim.Digest.String()}
	for _, idx := range []Subject{victim, evil} {
		if _, err := f.g.Check(context.Background(), idx); err != nil {
			t.Fatal(err)
		}
	}
	if v, err := f.g.Check(context.Background(), s); err != nil || !v.Admitted {
		t.Fatalf("platform manifest of a signed index, after another repository's index listed it: %+v %v (index %v)", v, err, sigs.index["signed/app"])
	}

	// An unsigned index of the same repository is seen last: this pull is
	// refused, but nothing is stored, and the signed index admits it again.
	s2 := f.image(t, "signed/two")
	victim.Repo, unsigned.Repo = "signed/two", "signed/two"
	victim.Manifest = []byte(strings.Replace(string(victim.Manifest), s.Digest.String(), s2.Digest.String(), 1))
	unsigned.Manifest = victim.Manifest
	f.g.Check(context.Background(), unsigned)
	if v, err := f.g.Check(context.Background(), s2); err != nil || v.Admitted {
		t.Fatalf("via an unsigned index: %+v %v", v, err)
	}
	f.g.Check(context.Background(), victim)
	if v, err := f.g.Check(context.Background(), s2); err != nil || !v.Admitted {
		t.Fatalf("the denial reached through an unsigned index was kept: %+v %v", v, err)
	}
}

// Hole 6: a failed scan is remembered with a back-off, so a crafted image
// does not cost a full scan on every request.
func TestFailedScanBacksOff(t *testing.T) {
	f := newFixture(t, policyYAML)
	f.scanner.err = errors.New("diffID mismatch")
	s := f.image(t, "team/app")
	before := metricValue(t, metrics.ScanBackoffRefusals, "")
	for i := 0; i < 5; i++ {
		_, err := f.g.Check(context.Background(), s)
		var se *ScanError
		if !errors.As(err, &se) || !strings.Contains(err.Error(), "diffID mismatch") {
			t.Fatalf("request %d: %v", i, err)
		}
		if i > 0 && se.RetryAfter <= 0 {
			t.Fatalf("request %d: no Retry-After from the back-off: %v", i, err)
		}
	}
	if n := f.scanner.scans.Load(); n != 1 {
		t.Fatalf("%d scans for 5 requests within the back-off", n)
	}
	if n := metricValue(t, metrics.ScanBackoffRefusals, "") - before; n != 4 {
		t.Errorf("gatehouse_scan_backoff_refusals_total grew by %v, want 4", n)
	}
	// After the back-off: tried again, failing again doubles the wait.
	f.now = f.now.Add(minBackoff)
	f.g.Check(context.Background(), s)
	if n := f.scanner.scans.Load(); n != 2 {
		t.Fatalf("%d scans after the back-off", n)
	}
	f.now = f.now.Add(minBackoff)
	f.g.Check(context.Background(), s)
	if n := f.scanner.scans.Load(); n != 2 {
		t.Fatalf("the second back-off did not double (%d scans)", n)
	}
	// Audit mode still serves from a remembered failure, saying why.
	a := s
	a.Repo = "audit/app"
	if v, err := f.g.Check(context.Background(), a); err != nil || !v.Admitted || v.Reason != ReasonScanError {
		t.Fatalf("audit: %+v %v", v, err)
	}
	// The cause goes away: after the back-off, a success is remembered.
	f.scanner.err = nil
	f.now = f.now.Add(maxBackoff)
	if v, err := f.g.Check(context.Background(), s); err != nil || !v.Admitted {
		t.Fatalf("after the cause went away: %+v %v", v, err)
	}
}

// Hole 7: blobs admitted under an earlier policy are not served under a
// new one until their image is judged again.
func TestPolicyChangeClosesOldBlobs(t *testing.T) {
	f := newFixture(t, policyYAML)
	high := Vuln{ID: "CVE-2026-2222", Severity: "HIGH", PkgName: "zlib", Installed: "1", Fixed: "2"}
	f.scanner.vulns["up.example/team/app"] = []Vuln{high}
	s := f.image(t, "team/app")
	cfg, _ := config.Parse([]byte(strings.Replace(policyYAML, "block: [CRITICAL, HIGH]", "block: [CRITICAL]", 1)))
	f.g.Close()
	f.open(t, cfg)
	if v, err := f.g.Check(context.Background(), s); err != nil || !v.Admitted {
		t.Fatalf("under the lax policy: %+v %v", v, err)
	}
	layer := layerDigests(t, s)[0]
	if !f.blobOK(t, "team/app", layer) {
		t.Fatal("layer of an admitted image refused")
	}
	cfg, _ = config.Parse([]byte(policyYAML))
	f.g.Close()
	f.open(t, cfg)
	if f.blobOK(t, "team/app", layer) {
		t.Fatal("a blob admitted under the old policy is served under the new one")
	}
	// And under a new DB, until the image is judged with it.
	cfg, _ = config.Parse([]byte(strings.Replace(policyYAML, "block: [CRITICAL, HIGH]", "block: [CRITICAL]", 1)))
	f.g.Close()
	f.open(t, cfg)
	if !f.blobOK(t, "team/app", layer) {
		t.Fatal("back under the first policy, its judgement does not count")
	}
	f.scanner.mu.Lock()
	f.scanner.db = "db-2"
	f.scanner.mu.Unlock()
	if f.blobOK(t, "team/app", layer) {
		t.Fatal("a blob admitted under the old DB is served under the new one")
	}
}

// An image whose signature is on an index not seen yet (a restart, a pull
// by platform digest first) is not denied for good: the signed index,
// once seen, admits it.
func TestSignedIndexSeenLater(t *testing.T) {
	sigs := newRuleSigs()
	f := newFixtureWith(t, sigPolicy, sigs)
	s := f.image(t, "signed/app")
	if v, err := f.g.Check(context.Background(), s); err != nil || v.Admitted {
		t.Fatalf("no index known, no signature: %+v %v", v, err)
	}
	idx := Subject{Upstream: "up.example", Repo: "signed/app", Digest: v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("a", 64)},
		MediaType: "application/vnd.oci.image.index.v1+json",
		Manifest:  []byte(`{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + s.Digest.String() + `","size":1}]}`)}
	sigs.rules["signed@"+idx.Digest.String()] = &SignatureResult{Verified: true, Format: "bundle", Digest: idx.Digest.String()}
	f.g.Check(context.Background(), idx)
	if v, err := f.g.Check(context.Background(), s); err != nil || !v.Admitted {
		t.Fatalf("after its signed index was seen: %+v %v", v, err)
	}
}

// An image admitted in audit mode (or with optional signatures) whose
// signature check depended on an index still opens its blobs.
func TestAuditIndexChildBlobsServed(t *testing.T) {
	sigs := newRuleSigs()
	f := newFixtureWith(t, sigPolicy, sigs)
	for _, repo := range []string{"audit/app", "optional/app"} {
		s := f.image(t, repo)
		idx := Subject{Upstream: "up.example", Repo: repo, Digest: v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("b", 64)},
			MediaType: "application/vnd.oci.image.index.v1+json",
			Manifest:  []byte(`{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + s.Digest.String() + `","size":1}]}`)}
		f.g.Check(context.Background(), idx)
		if v, err := f.g.Check(context.Background(), s); err != nil || !v.Admitted {
			t.Fatalf("%s: %+v %v", repo, v, err)
		}
		if !f.blobOK(t, repo, layerDigests(t, s)[0]) {
			t.Errorf("%s: the admitted platform manifest's layer refused", repo)
		}
	}
}

// A denial keeps counting after a DB update or a policy change, until the
// denied image is judged again: neither reopens its layers to an artifact.
func TestDenialOutlivesDBUpdate(t *testing.T) {
	f := newFixture(t, policyYAML)
	f.scanner.vulns["up.example/team/bad"] = []Vuln{critical}
	bad := f.image(t, "team/bad")
	f.g.Check(context.Background(), bad)
	layer := layerDigests(t, bad)[0]
	f.g.Check(context.Background(), artifactListing("evil/sbom", []v1.Hash{layer}))
	f.scanner.mu.Lock()
	f.scanner.db = "db-2"
	f.scanner.mu.Unlock()
	if f.blobOK(t, "evil/sbom", layer) {
		t.Fatal("a denied image's layer served through an artifact after a DB update")
	}
	cfg, _ := config.Parse([]byte(strings.Replace(policyYAML, "block: [CRITICAL, HIGH]", "block: [HIGH]", 1)))
	f.g.Close()
	f.open(t, cfg)
	f.g.Check(context.Background(), artifactListing("evil/sbom", []v1.Hash{layer}))
	if f.blobOK(t, "evil/sbom", layer) {
		t.Fatal("a denied image's layer served through an artifact after a policy change")
	}
}

// What a failed scan showed of a layer blob (its content is not the
// declared diffID; it breaks a scan limit) stops the next image that lists
// the same blob before any scan: re-pushing it under new manifest digests
// does not buy a new full read. An image listing the blob with its true
// diffID is not affected.
func TestLayerFactsStopRescans(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  func(declared v1.Hash) error
		deny bool // a 403 verdict (scan limit) rather than an error
	}{
		{"diffID mismatch", func(d v1.Hash) error {
			return &LayerError{Layer: d.String(), Actual: "sha256:" + strings.Repeat("7", 64)}
		}, false},
		{"scan limit", func(d v1.Hash) error { return &LimitError{Limit: LimitLayerFiles, Layer: d.String(), Max: 10} }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, policyYAML)
			first := f.image(t, "evil/a")
			var cf struct {
				RootFS struct {
					DiffIDs []v1.Hash `json:"diff_ids"`
				} `json:"rootfs"`
			}
			var m v1.Manifest
			json.Unmarshal(first.Manifest, &m)
			json.Unmarshal(f.blobs.blobs[m.Config.Digest], &cf)
			f.scanner.err = tc.err(cf.RootFS.DiffIDs[0])
			v, err := f.g.Check(context.Background(), first)
			if (err == nil) == !tc.deny || v != nil && v.Admitted {
				t.Fatalf("first image: %+v %v", v, err)
			}
			// The same blobs under another manifest digest (a new tag).
			again := relabel(t, first, "", "", "application/vnd.oci.image.layer.v1.tar+gzip")
			again.Repo = "evil/b"
			v, err = f.g.Check(context.Background(), again)
			if (err == nil) == !tc.deny || v != nil && v.Admitted {
				t.Fatalf("the same bad layer again: %+v %v", v, err)
			}
			if n := f.scanner.scans.Load(); n != 1 {
				t.Fatalf("%d scans: the known bad layer was read again", n)
			}
			if !tc.deny {
				// Its true diffID is known: an image declaring it is judged.
				f.scanner.err = nil
				good := f.image(t, "team/ok")
				if v, err := f.g.Check(context.Background(), good); err != nil || !v.Admitted {
					t.Fatalf("an unrelated image: %+v %v", v, err)
				}
			}
		})
	}
}

// BenchmarkBlobAllowed is the blob gate on the serving path: one admitted
// image in the client's repository, and 200 other repositories whose
// images (half of them denied) list the same base layer.
func BenchmarkBlobAllowed(b *testing.B) {
	f := newFixture(b, policyYAML)
	base := f.image(b, "team/app")
	if v, err := f.g.Check(context.Background(), base); err != nil || !v.Admitted {
		b.Fatalf("%+v %v", v, err)
	}
	denied := 0
	for i := 0; i < 200; i++ {
		repo := fmt.Sprintf("other/app%d", i)
		if i%2 == 0 {
			f.scanner.vulns["up.example/"+repo] = []Vuln{critical}
		}
		if v, err := f.g.Check(context.Background(), f.imageOn(b, repo, base, 0)); err == nil && !v.Admitted {
			denied++
		}
	}
	if denied != 100 {
		b.Fatalf("%d of 200 images sharing the layer denied, want 100", denied)
	}
	layer := layerDigests(b, base)[0]
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if ok, err := f.g.BlobAllowed(ctx, "up.example", "team/app", layer); !ok || err != nil {
			b.Fatal("the admitted image's layer refused")
		}
	}
}
