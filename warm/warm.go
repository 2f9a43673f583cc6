// Package warm judges images before any client asks for them: it resolves
// a reference through the content layer (package pull), asks the gate for
// a verdict on each manifest a containerd pull would ask about, and reads
// every blob of an admitted image into the cache, so that a rollout's
// first pull finds the verdict made and the layers local. Watcher does it
// at an interval for the repositories and tag patterns of gate.watch.
// There is no HTTP here: `gatehouse warm` does the same from outside,
// through a running gatehouse's registry API.
package warm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sync/errgroup"

	"github.com/gatehouse/gatehouse/gate"
	"github.com/gatehouse/gatehouse/pull"
)

// Content is what warming reads through: the content layer, whose cache
// and tag mappings the clients' pulls then find.
type Content interface {
	// Manifest returns upstream/repo:ref (a tag or a digest), cached.
	Manifest(ctx context.Context, up, repo, ref string) (*pull.Manifest, error)
	// ResolveTag asks upstream for a tag's digest now (a HEAD) and
	// records the mapping.
	ResolveTag(ctx context.Context, up, repo, tag string) (v1.Hash, error)
	// Tags lists a page of the repository's tags upstream.
	Tags(ctx context.Context, up, repo string, q url.Values) (*pull.TagList, error)
	// OpenBlob reads a blob through the cache, fetching it once.
	OpenBlob(ctx context.Context, up, repo string, dgst v1.Hash) (io.ReadCloser, int64, error)
}

var _ Content = (*pull.Content)(nil)

// Gate judges manifests (package gate).
type Gate interface {
	// Check returns the verdict on a manifest, a *gate.Pending while it
	// is being judged, or an error.
	Check(ctx context.Context, s gate.Subject) (*gate.Verdict, error)
}

var _ Gate = (*gate.Gate)(nil)

// Ref names what to warm: a tag, or a digest (with the tag that named it,
// when known, for the image's record).
type Ref struct {
	Upstream, Repo, Tag string
	Digest              *v1.Hash
}

func (r Ref) String() string {
	s := r.Upstream + "/" + r.Repo
	if r.Tag != "" {
		s += ":" + r.Tag
	}
	if r.Digest != nil {
		s += "@" + r.Digest.String()
	}
	return s
}

// Image is one manifest judged: the image itself, or a platform's
// manifest of an index.
type Image struct {
	Digest   v1.Hash
	Platform string // of its index entry; "" for a single-platform image
	Verdict  *gate.Verdict
	Blobs    int   // blobs read into the cache (admitted images only)
	Bytes    int64 // their size
}

// Result is what warming a reference did.
type Result struct {
	Digest v1.Hash // of the manifest or index the reference names
	Images []Image
}

// Admitted reports whether every image judged was admitted.
func (r *Result) Admitted() bool {
	for _, im := range r.Images {
		if !im.Verdict.Admitted {
			return false
		}
	}
	return true
}

// NoPlatformError is an index that lists none of the platforms asked
// for: nothing to judge (warming it again changes nothing).
type NoPlatformError struct {
	Index     v1.Hash
	Platforms []string
}

func (e *NoPlatformError) Error() string {
	return fmt.Sprintf("index %s lists none of the platforms %v", e.Index, e.Platforms)
}

// Warmer warms one reference at a time; it is safe for concurrent use.
type Warmer struct {
	content Content
	gate    Gate
	log     *slog.Logger
	// Client names the warmer in the gate's records (denial log).
	client string
	// retry is the pause before asking again about a manifest the gate
	// is still judging.
	retry time.Duration
}

// New returns a Warmer reading through content and asking g; client
// names it in the gate's denial log (e.g. "gate.watch").
func New(content Content, g Gate, client string, log *slog.Logger) *Warmer {
	if log == nil {
		log = slog.Default()
	}
	return &Warmer{content: content, gate: g, log: log, client: client, retry: time.Second}
}

// maxBlobFetches bounds the blobs of one image read at once (containerd
// fetches three at a time by default).
const maxBlobFetches = 3

// Warm judges ref as a containerd pull of it would be judged: the index
// (when it is one) and then each manifest of platforms it lists (all of
// them, for a single-platform image), each under the same verdict key a
// client's pull will look up. Every blob of an admitted image is read
// into the cache; a denied image's are not touched. The error is of the
// reference (not found, unreadable, not judged); a denial is a Result.
func (w *Warmer) Warm(ctx context.Context, ref Ref, platforms []string) (*Result, error) {
	r := ref.Tag
	if ref.Digest != nil {
		r = ref.Digest.String()
	}
	m, err := w.content.Manifest(ctx, ref.Upstream, ref.Repo, r)
	if err != nil {
		return nil, err
	}
	v, err := w.judge(ctx, ref, ref.Tag, m)
	if err != nil {
		return nil, err
	}
	res := &Result{Digest: m.Digest}
	if !m.MediaType.IsIndex() {
		im, err := w.image(ctx, ref, m, v, "")
		if err != nil {
			return nil, err
		}
		res.Images = append(res.Images, *im)
		return res, nil
	}
	descs, err := choose(m, platforms)
	if err != nil {
		return nil, err
	}
	for _, d := range descs {
		pm, err := w.content.Manifest(ctx, ref.Upstream, ref.Repo, d.Digest.String())
		if err != nil {
			return nil, err
		}
		pv, err := w.judge(ctx, ref, "", pm)
		if err != nil {
			return nil, err
		}
		im, err := w.image(ctx, ref, pm, pv, d.Platform.String())
		if err != nil {
			return nil, err
		}
		res.Images = append(res.Images, *im)
	}
	return res, nil
}

// choose returns the index's manifests for platforms, the first match of
// each, as containerd picks its node's.
func choose(m *pull.Manifest, platforms []string) ([]v1.Descriptor, error) {
	idx, err := v1.ParseIndexManifest(bytes.NewReader(m.Data))
	if err != nil {
		return nil, fmt.Errorf("index %s: %w", m.Digest, err)
	}
	var out []v1.Descriptor
	seen := map[v1.Hash]bool{}
	for _, p := range platforms {
		want, err := v1.ParsePlatform(p)
		if err != nil {
			return nil, err
		}
		for _, d := range idx.Manifests {
			if d.Platform != nil && !d.MediaType.IsIndex() && d.Platform.Satisfies(*want) {
				if !seen[d.Digest] {
					seen[d.Digest] = true
					out = append(out, d)
				}
				break
			}
		}
	}
	if len(out) == 0 {
		return nil, &NoPlatformError{Index: m.Digest, Platforms: platforms}
	}
	return out, nil
}

// judge asks the gate about m, asking again while it is being judged.
func (w *Warmer) judge(ctx context.Context, ref Ref, tag string, m *pull.Manifest) (*gate.Verdict, error) {
	s := gate.Subject{Upstream: ref.Upstream, Repo: ref.Repo, Tag: tag, Digest: m.Digest, MediaType: m.MediaType,
		Manifest: m.Data, Client: w.client, Ahead: true}
	for {
		v, err := w.gate.Check(ctx, s)
		var p *gate.Pending
		if !errors.As(err, &p) {
			return v, err
		}
		// The judgement goes on; the next Check joins it.
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%s: no verdict yet: %w", m.Digest, ctx.Err())
		case <-time.After(w.retry):
		}
	}
}

// image reads the blobs of an admitted manifest into the cache.
func (w *Warmer) image(ctx context.Context, ref Ref, m *pull.Manifest, v *gate.Verdict, platform string) (*Image, error) {
	im := &Image{Digest: m.Digest, Platform: platform, Verdict: v}
	if !v.Admitted {
		return im, nil
	}
	man, err := v1.ParseManifest(bytes.NewReader(m.Data))
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", m.Digest, err)
	}
	blobs := []v1.Descriptor{man.Config}
	for _, l := range man.Layers {
		// Foreign layers are fetched from their URLs, not the registry.
		if l.MediaType.IsDistributable() {
			blobs = append(blobs, l)
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(maxBlobFetches)
	sizes := make([]int64, len(blobs))
	for i, d := range blobs {
		g.Go(func() error {
			n, err := w.drain(gctx, ref, d.Digest)
			sizes[i] = n
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	for _, n := range sizes {
		im.Blobs++
		im.Bytes += n
	}
	return im, nil
}

// drain reads a blob to its end through the cache, which verifies its
// digest and keeps it.
func (w *Warmer) drain(ctx context.Context, ref Ref, dgst v1.Hash) (int64, error) {
	rc, _, err := w.content.OpenBlob(ctx, ref.Upstream, ref.Repo, dgst)
	if err != nil {
		return 0, fmt.Errorf("blob %s: %w", dgst, err)
	}
	defer rc.Close()
	n, err := io.Copy(io.Discard, rc)
	if err != nil {
		return n, fmt.Errorf("blob %s: %w", dgst, err)
	}
	return n, nil
}
