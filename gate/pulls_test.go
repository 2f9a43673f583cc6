package gate

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Pulls are counted in memory on the hot path, visible at once through the
// API and written to the database in one batch by FlushPulls.
func TestPullsCountedAndFlushed(t *testing.T) {
	f := newFixture(t, policyYAML)
	img := f.image(t, "team/app")
	get := img
	get.Pull = true
	// Listed by an index with a platform: the record carries it.
	idx := Subject{Upstream: "up.example", Repo: "team/app", MediaType: string(types.OCIImageIndex),
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
		d, err := f.g.Image(img.Digest.String())
		if err != nil {
			t.Fatal(err)
		}
		if d.Pulls != pulls || !d.LastPulled.Equal(start.Add(2*time.Minute)) || !d.FirstSeen.Equal(start) {
			t.Errorf("%s: pulls %d, last %v, first %v; want %d, %v, %v", when, d.Pulls, d.LastPulled, d.FirstSeen, pulls, start.Add(2*time.Minute), start)
		}
		if d.Platform != "linux/arm64/v8" || d.ArtifactType != string(types.DockerConfigJSON) {
			t.Errorf("%s: platform %q, artifact type %q", when, d.Platform, d.ArtifactType)
		}
		imgs, err := f.g.Images()
		if err != nil || len(imgs) != 1 || imgs[0].Pulls != pulls || imgs[0].Platform != "linux/arm64/v8" {
			t.Errorf("%s: Images() = %+v, %v", when, imgs, err)
		}
	}
	check("before flush", 3)
	if err := f.g.FlushPulls(); err != nil {
		t.Fatal(err)
	}
	if n := len(f.g.unflushed()); n != 0 {
		t.Fatalf("%d counts left after flush", n)
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
