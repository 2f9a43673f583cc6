package pull

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/gatehouse/gatehouse/cache"
	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/metrics"
	"github.com/gatehouse/gatehouse/storage"
	"github.com/gatehouse/gatehouse/upstream"
)

// MaxManifestSize caps a manifest read from upstream (containerd refuses
// larger ones too).
const MaxManifestSize = 4 << 20

// Manifest is a verified, validated manifest as upstream served it.
type Manifest struct {
	Digest    v1.Hash
	MediaType types.MediaType
	Data      []byte // the exact bytes upstream sent
	// Stale is set when a tag mapping whose TTL ran out was used because
	// upstream could not be asked (stale-if-error).
	Stale bool
}

var manifestAccept = http.Header{"Accept": {upstream.ManifestAccept}}

// Manifest returns upstream/repo:ref, ref a tag or a sha256 digest: a tag
// through its cached mapping while fresh, else asked upstream with a HEAD
// (the stale mapping is used when upstream fails, unless it says the tag
// is gone); a digest from the cache, else fetched, verified and cached.
func (c *Content) Manifest(ctx context.Context, up, repo, ref string) (*Manifest, error) {
	u, _, err := c.upstream(up)
	if err != nil {
		return nil, err
	}
	if strings.Contains(ref, ":") {
		dgst, err := ParseDigest(ref)
		if err != nil {
			return nil, &Error{Code: CodeDigestInvalid, Message: err.Error()}
		}
		return c.byDigest(ctx, u, repo, dgst)
	}
	cached, terr := c.store.Tag(u.Name, repo, ref)
	if errors.Is(terr, storage.ErrUnavailable) {
		return nil, terr
	}
	if terr == nil && c.now().Sub(cached.Fetched) < u.TagTTL.D() {
		metrics.CacheRequests.WithLabelValues("tag", "hit").Inc()
		return c.byDigest(ctx, u, repo, cached.Digest)
	}
	metrics.CacheRequests.WithLabelValues("tag", "miss").Inc()
	dgst, err := c.revalidateTag(ctx, u, repo, ref)
	if err != nil {
		if terr == nil && !IsNotFound(err) {
			// stale-if-error: upstream down, 429 or 5xx; serve what we know.
			if m, merr := c.cached(cached.Digest); merr == nil {
				metrics.CacheRequests.WithLabelValues("tag", "stale").Inc()
				c.log.Warn("serving stale tag mapping", "upstream", u.Name, "repo", repo, "tag", ref, "err", err)
				m.Stale = true
				return m, nil
			}
		}
		return nil, err
	}
	return c.byDigest(ctx, u, repo, dgst)
}

func fromCache(m *cache.Manifest) *Manifest {
	return &Manifest{Digest: m.Digest, MediaType: types.MediaType(m.MediaType), Data: m.Data}
}

// cached returns a manifest from the cache: validated before it was
// cached, by this version's rules (New swept older entries).
func (c *Content) cached(dgst v1.Hash) (*Manifest, error) {
	m, err := c.store.Manifest(dgst)
	if err != nil {
		return nil, err
	}
	return fromCache(m), nil
}

// revalidateTag asks upstream for the digest of a tag with a HEAD (Docker
// Hub does not count HEADs against its rate limit) and records the mapping.
// Concurrent requests for one tag share one upstream request.
func (c *Content) revalidateTag(ctx context.Context, u *config.Upstream, repo, tag string) (v1.Hash, error) {
	key := "tag\x00" + u.Name + "\x00" + repo + "\x00" + tag
	v, err, _ := c.flight.Do(key, func() (any, error) {
		ctx := context.WithoutCancel(ctx)
		resp, err := c.upstreams[u.Name].Do(ctx, http.MethodHead, repo, "manifests/"+tag, nil, manifestAccept)
		if err != nil {
			return v1.Hash{}, err
		}
		resp.Body.Close()
		dgst, err := ParseDigest(resp.Header.Get("Docker-Content-Digest"))
		if err != nil {
			// No usable digest header: fetch the manifest by tag and hash it.
			m, err := c.fetchManifest(ctx, u, repo, tag, nil)
			if err != nil {
				return v1.Hash{}, err
			}
			dgst = m.Digest
		}
		if err := c.store.PutTag(u.Name, repo, tag, &cache.Tag{Digest: dgst, Fetched: c.now()}); err != nil {
			c.log.Error("recording tag mapping", "err", err)
		}
		return dgst, nil
	})
	if err != nil {
		return v1.Hash{}, err
	}
	return v.(v1.Hash), nil
}

// byDigest returns a manifest from the cache, or fetches, verifies and
// caches it. A cached manifest never costs an upstream request.
func (c *Content) byDigest(ctx context.Context, u *config.Upstream, repo string, dgst v1.Hash) (*Manifest, error) {
	if m, err := c.cached(dgst); err == nil {
		metrics.CacheRequests.WithLabelValues("manifest", "hit").Inc()
		return m, nil
	} else if errors.Is(err, storage.ErrUnavailable) {
		// The shared records do not answer: fail (503) rather than send
		// every request of the outage to upstream.
		return nil, err
	} else if !errors.Is(err, cache.ErrNotFound) {
		c.log.Error("reading cached manifest; fetching it again", "digest", dgst, "err", err)
	}
	metrics.CacheRequests.WithLabelValues("manifest", "miss").Inc()
	v, err, _ := c.flight.Do("manifest\x00"+dgst.String(), func() (any, error) {
		return c.fetchManifest(context.WithoutCancel(ctx), u, repo, dgst.String(), &dgst)
	})
	if err != nil {
		return nil, err
	}
	return v.(*Manifest), nil
}

// errManifestStalled ends a manifest download whose body stopped arriving.
var errManifestStalled = errors.New("upstream sent no manifest bytes for responseHeaderTimeout")

// fetchManifest GETs a manifest, verifies it (against want when given),
// validates and stores it.
func (c *Content) fetchManifest(ctx context.Context, u *config.Upstream, repo, ref string, want *v1.Hash) (*Manifest, error) {
	data, contentType, dgst, err := c.readManifest(ctx, u, repo, ref, want)
	if err != nil {
		return nil, err
	}
	mt, err := validate(data, contentType)
	if err != nil {
		metrics.ManifestFetchesFailed.WithLabelValues(u.Name, "invalid").Inc()
		return nil, err
	}
	m := &cache.Manifest{Digest: dgst, Data: data, MediaType: string(mt), Upstream: u.Name, Repo: repo, Created: c.now()}
	if err := c.store.PutManifest(m); err != nil {
		c.log.Error("caching manifest", "digest", dgst, "err", err)
	}
	return fromCache(m), nil
}

// readManifest GETs a manifest capped at MaxManifestSize, hashing it (and
// checking it against want when given, and against the length announced).
// A body that sends nothing for the upstream's responseHeaderTimeout is
// abandoned: the fetch is shared by every waiting client and must not hang.
func (c *Content) readManifest(ctx context.Context, u *config.Upstream, repo, ref string, want *v1.Hash) ([]byte, string, v1.Hash, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	resp, err := c.upstreams[u.Name].Do(ctx, http.MethodGet, repo, "manifests/"+ref, nil, manifestAccept)
	if err != nil {
		return nil, "", v1.Hash{}, err
	}
	defer resp.Body.Close()
	if resp.ContentLength > MaxManifestSize {
		return nil, "", v1.Hash{}, c.manifestTooLarge(u)
	}
	stall := u.ResponseHeaderTimeout.D()
	if stall <= 0 {
		stall = 30 * time.Second
	}
	watchdog := time.AfterFunc(stall, func() { cancel(errManifestStalled) })
	defer watchdog.Stop()
	data, err := io.ReadAll(&progressReader{r: io.LimitReader(resp.Body, MaxManifestSize+1), progress: func() { watchdog.Reset(stall) }})
	if err != nil {
		if cause := context.Cause(ctx); cause != nil {
			err = cause
		}
		metrics.ManifestFetchesFailed.WithLabelValues(u.Name, "read").Inc()
		return nil, "", v1.Hash{}, badUpstream(CodeUnavailable, "reading manifest from upstream %s: %v", u.Name, err)
	}
	dgst, err := c.checkManifest(u, data, resp.ContentLength, want)
	return data, resp.Header.Get("Content-Type"), dgst, err
}

// checkManifest checks a manifest's length (the cap, the length announced)
// and digest (against want when given) and returns the digest.
func (c *Content) checkManifest(u *config.Upstream, data []byte, announced int64, want *v1.Hash) (v1.Hash, error) {
	if len(data) > MaxManifestSize {
		return v1.Hash{}, c.manifestTooLarge(u)
	}
	if announced >= 0 && int64(len(data)) != announced {
		metrics.ManifestFetchesFailed.WithLabelValues(u.Name, "read").Inc()
		return v1.Hash{}, badUpstream(CodeUnavailable, "upstream %s sent %d manifest bytes of the %d it announced", u.Name, len(data), announced)
	}
	sum := sha256.Sum256(data)
	dgst := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
	if want != nil && dgst != *want {
		metrics.ManifestFetchesFailed.WithLabelValues(u.Name, "digest").Inc()
		return v1.Hash{}, badUpstream(CodeManifestInvalid, "upstream %s sent a manifest whose digest is %s, not %s", u.Name, dgst, want)
	}
	return dgst, nil
}

func (c *Content) manifestTooLarge(u *config.Upstream) error {
	metrics.ManifestFetchesFailed.WithLabelValues(u.Name, "too_large").Inc()
	return badUpstream(CodeManifestInvalid, "upstream manifest is larger than 4 MiB")
}

// progressReader calls progress after every read that returned bytes.
type progressReader struct {
	r        io.Reader
	progress func()
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if n > 0 {
		p.progress()
	}
	return n, err
}
