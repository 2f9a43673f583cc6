package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// ImageSpec describes a synthetic test image: layers of pseudo-random bytes
// from a fixed seed, so every run pushes the same digests.
type ImageSpec struct {
	Seed      int64
	Layers    int
	LayerSize int64 // bytes of random file content per layer
	OCI       bool  // OCI media types; false: Docker schema 2
	Platform  v1.Platform
}

// BuildImage builds the image described by spec.
func BuildImage(t testing.TB, spec ImageSpec) v1.Image {
	t.Helper()
	src := rand.NewSource(spec.Seed)
	layerType, manifestType, configType := types.DockerLayer, types.DockerManifestSchema2, types.DockerConfigJSON
	if spec.OCI {
		layerType, manifestType, configType = types.OCILayer, types.OCIManifestSchema1, types.OCIConfigJSON
	}
	var adds []mutate.Addendum
	for i := range spec.Layers {
		l, err := random.Layer(spec.LayerSize, layerType, random.WithSource(src))
		if err != nil {
			t.Fatal(err)
		}
		adds = append(adds, mutate.Addendum{Layer: l, History: v1.History{
			CreatedBy: fmt.Sprintf("e2e layer %d of %d (seed %d)", i+1, spec.Layers, spec.Seed),
		}})
	}
	img, err := mutate.Append(empty.Image, adds...)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = spec.Platform.OS, spec.Platform.Architecture, spec.Platform.Variant
	cf.Config.Cmd = []string{"/bin/true"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	img = mutate.MediaType(img, manifestType)
	img = mutate.ConfigMediaType(img, configType)
	return img
}

// Pushed is an image or index pushed to an upstream registry.
type Pushed struct {
	Repo   string // repository path, without the registry host
	Tag    string
	Digest v1.Hash // digest of what Tag points to
}

// Ref is host/repo:tag.
func (p Pushed) Ref(host string) string { return host + "/" + p.Repo + ":" + p.Tag }

// SmallImage is the default single-platform test image: Docker schema 2,
// linux/amd64, three layers of 1 MiB.
func SmallImage(seed int64) ImageSpec {
	return ImageSpec{Seed: seed, Layers: 3, LayerSize: 1 << 20, Platform: v1.Platform{OS: "linux", Architecture: "amd64"}}
}

// PushImage pushes a single-platform image to repo:tag.
func (r *Registry) PushImage(t testing.TB, repo, tag string, spec ImageSpec) Pushed {
	t.Helper()
	return r.Push(t, repo, tag, BuildImage(t, spec))
}

// Push pushes img (e.g. a scantest fixture) to repo:tag.
func (r *Registry) Push(t testing.TB, repo, tag string, img v1.Image) Pushed {
	t.Helper()
	ref := r.Repo(t, repo).Tag(tag)
	if err := remote.Write(ref, img, r.RemoteOptions()...); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	dgst, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return Pushed{Repo: repo, Tag: tag, Digest: dgst}
}

// TestPlatforms are the platforms of the multi-platform test index.
var TestPlatforms = []v1.Platform{
	{OS: "linux", Architecture: "amd64"},
	{OS: "linux", Architecture: "arm64", Variant: "v8"},
}

// PushIndex pushes an OCI image index with one OCI image per platform (two
// layers of 512 KiB each, seeds derived from seed) to repo:tag.
func (r *Registry) PushIndex(t testing.TB, repo, tag string, seed int64, platforms ...v1.Platform) Pushed {
	t.Helper()
	if len(platforms) == 0 {
		platforms = TestPlatforms
	}
	// The index is written by hand, the way build tools write them (no
	// artifactType in its descriptors: skopeo 1.9 does not know that field
	// and would re-serialize the index, changing its digest).
	im := v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex}
	repoName := r.Repo(t, repo)
	for i, p := range platforms {
		img := BuildImage(t, ImageSpec{Seed: seed*100 + int64(i), Layers: 2, LayerSize: 512 << 10, OCI: true, Platform: p})
		desc, err := partialDescriptor(img)
		if err != nil {
			t.Fatal(err)
		}
		desc.Platform = &p
		if err := remote.Write(repoName.Digest(desc.Digest.String()), img, r.RemoteOptions()...); err != nil {
			t.Fatalf("push %s image of index %s/%s:%s: %v", p, r.Host, repo, tag, err)
		}
		im.Manifests = append(im.Manifests, desc)
	}
	raw, err := json.Marshal(im)
	if err != nil {
		t.Fatal(err)
	}
	ref := repoName.Tag(tag)
	if err := remote.Put(ref, rawManifest{raw: raw, mediaType: types.OCIImageIndex}, r.RemoteOptions()...); err != nil {
		t.Fatalf("push index %s: %v", ref, err)
	}
	dgst, _, err := v1.SHA256(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	return Pushed{Repo: repo, Tag: tag, Digest: dgst}
}

// rawManifest is a manifest or index pushed as the exact bytes given.
type rawManifest struct {
	raw       []byte
	mediaType types.MediaType
}

func (m rawManifest) RawManifest() ([]byte, error)        { return m.raw, nil }
func (m rawManifest) MediaType() (types.MediaType, error) { return m.mediaType, nil }

func partialDescriptor(img v1.Image) (v1.Descriptor, error) {
	mt, err := img.MediaType()
	if err != nil {
		return v1.Descriptor{}, err
	}
	dgst, err := img.Digest()
	if err != nil {
		return v1.Descriptor{}, err
	}
	size, err := img.Size()
	if err != nil {
		return v1.Descriptor{}, err
	}
	return v1.Descriptor{MediaType: mt, Digest: dgst, Size: size}, nil
}

// Object is one piece of content of an image: a manifest, index, config or
// layer, with its bytes as the upstream serves them.
type Object struct {
	Kind string // "index", "manifest linux/amd64", "config linux/amd64", "layer 2 linux/amd64"
	Data []byte
}

// Objects maps digest ("sha256:...") to content.
type Objects map[string]Object

// Digests returns the digests, sorted.
func (o Objects) Digests() []string {
	var ds []string
	for d := range o {
		ds = append(ds, d)
	}
	slices.Sort(ds)
	return ds
}

// Content reads, straight from the registry with go-containerregistry, every
// object reachable from repo@dgst: the index (if it is one), then for each
// manifest whose platform matches (all when platform is nil) the manifest,
// config and layers.
func (r *Registry) Content(t testing.TB, repo string, dgst v1.Hash, platform *v1.Platform) Objects {
	t.Helper()
	ref := r.Repo(t, repo).Digest(dgst.String())
	desc, err := remote.Get(ref, r.RemoteOptions()...)
	if err != nil {
		t.Fatalf("read %s from upstream: %v", ref, err)
	}
	objs := Objects{}
	if !desc.MediaType.IsIndex() {
		img, err := desc.Image()
		if err != nil {
			t.Fatal(err)
		}
		addImage(t, objs, img, "")
		return objs
	}
	objs[dgst.String()] = Object{Kind: "index", Data: desc.Manifest}
	idx, err := desc.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range im.Manifests {
		if platform != nil && (m.Platform == nil || !m.Platform.Satisfies(*platform)) {
			continue
		}
		img, err := idx.Image(m.Digest)
		if err != nil {
			t.Fatal(err)
		}
		addImage(t, objs, img, " "+m.Platform.String())
	}
	return objs
}

func addImage(t testing.TB, objs Objects, img v1.Image, suffix string) {
	t.Helper()
	raw, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	dgst, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	objs[dgst.String()] = Object{Kind: "manifest" + suffix, Data: raw}
	cfg, err := img.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfgName, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	objs[cfgName.String()] = Object{Kind: "config" + suffix, Data: cfg}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range layers {
		ld, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatalf("read layer %s: %v", ld, err)
		}
		objs[ld.String()] = Object{Kind: fmt.Sprintf("layer %d%s", i+1, suffix), Data: b}
	}
}

// compareObject returns "" when got equals want.Data, else a description of
// the first difference.
func compareObject(dgst string, want Object, got []byte) string {
	if bytes.Equal(want.Data, got) {
		return ""
	}
	n := min(len(want.Data), len(got))
	off := n
	for i := range n {
		if want.Data[i] != got[i] {
			off = i
			break
		}
	}
	msg := fmt.Sprintf("%s %s: %d bytes, want %d; first difference at byte %d", want.Kind, dgst, len(got), len(want.Data), off)
	if !strings.HasPrefix(want.Kind, "layer") {
		msg += fmt.Sprintf("\n  got:  %.300q\n  want: %.300q", got, want.Data)
	}
	return msg
}

// digestRef is host/repo@digest.
func digestRef(host, repo string, dgst v1.Hash) string {
	return host + "/" + repo + "@" + dgst.String()
}
