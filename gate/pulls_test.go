package gate

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/gatehouse/gatehouse/gate/records"
	"github.com/gatehouse/gatehouse/storage"
)

// Pulls are counted in memory on the hot path, visible at once through the
// API and written to the database in one batch by FlushPulls.
func TestPullsCountedAndFlushed(t *testing.T) {
	f := newFixture(t, policyYAML)
	img := f.image(t, "team/app")
	get := img
	get.Pull = true
	// Listed by an index with a platform: the record carries it.
	idx := Subject{Upstream: "up.example", Repo: "team/app", MediaType: types.OCIImageIndex,
		Manifest: fmt.Appendf(nil, `{"schemaVersion":2,"manifests":[{"mediaType":%q,"digest":%q,"size":1,"platform":{"os":"linux","architecture":"arm64","variant":"v8"}}]}`,
			img.MediaType, img.Digest)}
	if _, err := f.g.Check(context.Background(), idx); err != nil {
		t.Fatal(err)
	}
	start := f.now
	for i := range 3 {
		f.now = start.Add(time.Duration(i) * time.Minute)
		if _, err := f.g.Check(context.Background(), get); err != nil {
			t.Fatal(err)
		}
	}
	// A HEAD resolves a tag: not a pull.
	if _, err := f.g.Check(context.Background(), img); err != nil {
		t.Fatal(err)
	}
	check := func(when string, pulls int64) {
		t.Helper()
		d, err := f.g.Image(context.Background(), img.Digest.String())
		if err != nil {
			t.Fatal(err)
		}
		if d.Pulls != pulls || !d.LastPulled.Equal(start.Add(2*time.Minute)) || !d.FirstSeen.Equal(start) {
			t.Errorf("%s: pulls %d, last %v, first %v; want %d, %v, %v", when, d.Pulls, d.LastPulled, d.FirstSeen, pulls, start.Add(2*time.Minute), start)
		}
		if d.Platform != "linux/arm64/v8" || d.ArtifactType != string(types.DockerConfigJSON) {
			t.Errorf("%s: platform %q, artifact type %q", when, d.Platform, d.ArtifactType)
		}
		imgs, err := f.g.Images(context.Background())
		if err != nil || len(imgs) != 1 || imgs[0].Pulls != pulls || imgs[0].Platform != "linux/arm64/v8" {
			t.Errorf("%s: Images() = %+v, %v", when, imgs, err)
		}
	}
	check("before flush", 3)
	if err := f.g.FlushPulls(); err != nil {
		t.Fatal(err)
	}
	if n := storedPulls(t, f, img.Digest.String()); n != 3 {
		t.Fatalf("%d pulls in the database after flush, want 3", n)
	}
	check("after flush", 3)
	if _, err := f.g.Check(context.Background(), get); err != nil {
		t.Fatal(err)
	}
	if err := f.g.FlushPulls(); err != nil {
		t.Fatal(err)
	}
	check("second flush", 4)
}

// An image no index listed gets its platform from its config, read after
// the scan; a non-image artifact's type is its artifactType.
func TestPlatformFromConfigAndArtifactType(t *testing.T) {
	f := newFixture(t, policyYAML)
	img, err := random.Image(100, 1)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "riscv64"
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	f.blobs.add(img)
	raw, _ := img.RawManifest()
	d, _ := img.Digest()
	mt, _ := img.MediaType()
	if _, err := f.g.Check(context.Background(), Subject{Upstream: "up.example", Repo: "team/app", Digest: d, MediaType: mt, Manifest: raw}); err != nil {
		t.Fatal(err)
	}
	rec, err := f.g.Image(context.Background(), d.String())
	if err != nil || rec.Platform != "linux/riscv64" {
		t.Fatalf("platform %q, %v; want linux/riscv64", rec.Platform, err)
	}

	chart := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("c", 64)}
	manifest := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.cncf.helm.config.v1+json",` +
		`"config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}`
	if _, err := f.g.Check(context.Background(), Subject{Upstream: "up.example", Repo: "charts/app", Digest: chart,
		MediaType: types.OCIManifestSchema1, Manifest: []byte(manifest)}); err != nil {
		t.Fatal(err)
	}
	if rec, err = f.g.Image(context.Background(), chart.String()); err != nil || rec.ArtifactType != "application/vnd.cncf.helm.config.v1+json" || rec.Kind != "artifact" {
		t.Fatalf("chart record %+v, %v", rec, err)
	}
}

// storedPulls reads the pull count of a manifest's record in the database.
func storedPulls(t *testing.T, f *fixture, dgst string) int64 {
	t.Helper()
	var rec records.ImageRecord
	err := f.meta.View(context.Background(), func(tx storage.Tx) error {
		b, err := tx.Get("images", []byte(dgst))
		if err != nil || b == nil {
			return err
		}
		return json.Unmarshal(b, &rec)
	})
	if err != nil {
		t.Fatal(err)
	}
	return rec.Pulls
}

// An image admitted unscanned (audit mode, no DB) names its rule in the
// image list as in its record: the rule is on the verdict, not only in a
// scan decision.
func TestImagesNameTheRuleOfUnscannedImages(t *testing.T) {
	f := newFixtureWith(t, "upstreams: [{name: up.example}]\ngate: {policy: {rules: [{name: watch, mode: audit}]}}\n", nil)
	f.scanner.mu.Lock()
	f.scanner.db = ""
	f.scanner.mu.Unlock()
	v, err := f.g.Check(context.Background(), f.image(t, "lib/app"))
	if err != nil || !v.Admitted || v.Reason != ReasonScanError {
		t.Fatalf("%+v %v", v, err)
	}
	imgs, err := f.g.Images(context.Background())
	if err != nil || len(imgs) != 1 || imgs[0].Rule != "watch" {
		t.Fatalf("Images() = %+v, %v; want the rule watch", imgs, err)
	}
}
