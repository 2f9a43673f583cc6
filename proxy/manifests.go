package proxy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/cache"
	"github.com/gatehouse/gatehouse/gate"
	"github.com/gatehouse/gatehouse/metrics"
	"github.com/gatehouse/gatehouse/proxy/upstream"
)

// MaxManifestSize caps a manifest read from upstream (containerd refuses
// larger ones too).
const MaxManifestSize = 4 << 20

// Manifest media types gatehouse serves.
const (
	MediaTypeOCIIndex     = "application/vnd.oci.image.index.v1+json"
	MediaTypeOCIManifest  = "application/vnd.oci.image.manifest.v1+json"
	MediaTypeDockerList   = "application/vnd.docker.distribution.manifest.list.v2+json"
	MediaTypeDockerSchema = "application/vnd.docker.distribution.manifest.v2+json"
)

var manifestAccept = http.Header{"Accept": {upstream.ManifestAccept}}

func (h *Handler) serveManifest(w http.ResponseWriter, r *http.Request, rt *Route) *Error {
	m, stale, err := h.manifest(r.Context(), rt)
	if err != nil {
		return asError(err, CodeManifestUnknown)
	}
	if h.gate != nil {
		tag := ""
		if !rt.ByDigest {
			tag = rt.Ref
		}
		v, err := h.gate.Check(r.Context(), gate.Subject{Upstream: rt.Upstream.Name, Repo: rt.Repo, Tag: tag,
			Digest: m.Digest, MediaType: m.MediaType, Manifest: m.Data, Client: r.RemoteAddr, Pull: r.Method == http.MethodGet})
		if err != nil {
			oe := gateError(err)
			result := "error"
			var p *gate.Pending
			if errors.As(err, &p) {
				result = "pending"
			}
			metrics.GateDecisions.WithLabelValues(result, result, "").Inc()
			return oe
		}
		if !v.Admitted {
			metrics.GateDecisions.WithLabelValues("denied", v.Reason, v.Rule).Inc()
			return denied(v)
		}
		if v.Kind != "index" {
			metrics.GateDecisions.WithLabelValues("admitted", v.Reason, v.Rule).Inc()
		}
	}
	hd := w.Header()
	hd.Set("Content-Type", m.MediaType)
	hd.Set("Docker-Content-Digest", m.Digest.String())
	hd.Set("Content-Length", strconv.Itoa(len(m.Data)))
	hd.Set("Etag", `"`+m.Digest.String()+`"`)
	if stale {
		// RFC 9111 §5.5: the mapping could not be revalidated upstream.
		hd.Set("Warning", `110 gatehouse "Response is Stale"`)
	}
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		w.Write(m.Data)
	}
	return nil
}

// manifest resolves the route's reference to a verified manifest. stale is
// true when a tag mapping whose TTL ran out was served because upstream
// could not be asked.
func (h *Handler) manifest(ctx context.Context, rt *Route) (m *cache.Manifest, stale bool, err error) {
	if rt.ByDigest {
		m, err = h.manifestByDigest(ctx, rt, rt.Digest)
		return m, false, err
	}
	up := rt.Upstream.Name
	cached, terr := h.store.Tag(up, rt.Repo, rt.Ref)
	if terr == nil && h.now().Sub(cached.Fetched) < rt.Upstream.TagTTL.D() {
		metrics.CacheRequests.WithLabelValues("tag", "hit").Inc()
		m, err = h.manifestByDigest(ctx, rt, cached.Digest)
		return m, false, err
	}
	metrics.CacheRequests.WithLabelValues("tag", "miss").Inc()
	dgst, err := h.revalidateTag(ctx, rt)
	if err != nil {
		var ue *upstream.Error
		if terr == nil && (!errors.As(err, &ue) || !ue.NotFound()) {
			// stale-if-error: upstream down, 429 or 5xx; serve what we know.
			if m, merr := h.store.Manifest(cached.Digest); merr == nil {
				metrics.CacheRequests.WithLabelValues("tag", "stale").Inc()
				h.log.Warn("serving stale tag mapping", "upstream", up, "repo", rt.Repo, "tag", rt.Ref, "err", err)
				return m, true, nil
			}
		}
		return nil, false, err
	}
	m, err = h.manifestByDigest(ctx, rt, dgst)
	return m, false, err
}

// revalidateTag asks upstream for the digest of a tag with a HEAD (Docker
// Hub does not count HEADs against its rate limit) and records the mapping.
// Concurrent requests for one tag share one upstream request.
func (h *Handler) revalidateTag(ctx context.Context, rt *Route) (v1.Hash, error) {
	key := "tag\x00" + rt.Upstream.Name + "\x00" + rt.Repo + "\x00" + rt.Ref
	v, err, _ := h.flight.Do(key, func() (any, error) {
		ctx := context.WithoutCancel(ctx)
		resp, err := h.client(rt).Do(ctx, http.MethodHead, rt.Repo, "manifests/"+rt.Ref, nil, manifestAccept)
		if err != nil {
			return v1.Hash{}, err
		}
		resp.Body.Close()
		var dgst v1.Hash
		if d, derr := parseDigest(resp.Header.Get("Docker-Content-Digest")); derr == nil {
			dgst = d
		} else {
			// No usable digest header: fetch the manifest by tag and hash it.
			m, err := h.fetchManifest(ctx, rt, rt.Ref, nil)
			if err != nil {
				return v1.Hash{}, err
			}
			dgst = m.Digest
		}
		t := &cache.Tag{Digest: dgst, Fetched: h.now()}
		if err := h.store.PutTag(rt.Upstream.Name, rt.Repo, rt.Ref, t); err != nil {
			h.log.Error("recording tag mapping", "err", err)
		}
		return dgst, nil
	})
	if err != nil {
		return v1.Hash{}, err
	}
	return v.(v1.Hash), nil
}

// manifestByDigest returns a manifest from the cache, or fetches, verifies
// and caches it. A cached manifest never costs an upstream request.
func (h *Handler) manifestByDigest(ctx context.Context, rt *Route, dgst v1.Hash) (*cache.Manifest, error) {
	if m, err := h.store.Manifest(dgst); err == nil {
		metrics.CacheRequests.WithLabelValues("manifest", "hit").Inc()
		return m, nil
	} else if !errors.Is(err, cache.ErrNotFound) {
		h.log.Error("reading cached manifest; fetching it again", "digest", dgst, "err", err)
	}
	metrics.CacheRequests.WithLabelValues("manifest", "miss").Inc()
	v, err, _ := h.flight.Do("manifest\x00"+dgst.String(), func() (any, error) {
		return h.fetchManifest(context.WithoutCancel(ctx), rt, dgst.String(), &dgst)
	})
	if err != nil {
		return nil, err
	}
	return v.(*cache.Manifest), nil
}

// errManifestStalled ends a manifest download whose body stopped arriving.
var errManifestStalled = errors.New("upstream sent no manifest bytes for responseHeaderTimeout")

// fetchManifest GETs a manifest, caps and verifies it (against want when
// given), and stores it. A body that sends nothing for the upstream's
// responseHeaderTimeout is abandoned: the fetch is shared by every waiting
// client and must not hang.
func (h *Handler) fetchManifest(ctx context.Context, rt *Route, ref string, want *v1.Hash) (*cache.Manifest, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	up := rt.Upstream.Name
	resp, err := h.client(rt).Do(ctx, http.MethodGet, rt.Repo, "manifests/"+ref, nil, manifestAccept)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	tooLarge := func() error {
		metrics.ManifestFetchesFailed.WithLabelValues(up, "too_large").Inc()
		return &Error{Code: CodeManifestInvalid, Status: http.StatusBadGateway, Message: "upstream manifest is larger than 4 MiB"}
	}
	if resp.ContentLength > MaxManifestSize {
		return nil, tooLarge()
	}
	stall := rt.Upstream.ResponseHeaderTimeout.D()
	if stall <= 0 {
		stall = 30 * time.Second
	}
	watchdog := time.AfterFunc(stall, func() { cancel(errManifestStalled) })
	defer watchdog.Stop()
	data, err := io.ReadAll(&progressReader{r: io.LimitReader(resp.Body, MaxManifestSize+1), progress: func() { watchdog.Reset(stall) }})
	if err != nil {
		if c := context.Cause(ctx); c != nil {
			err = c
		}
		metrics.ManifestFetchesFailed.WithLabelValues(up, "read").Inc()
		return nil, &Error{Code: CodeUnavailable, Status: http.StatusBadGateway, Message: "reading manifest from upstream " + up + ": " + err.Error()}
	}
	if len(data) > MaxManifestSize {
		return nil, tooLarge()
	}
	if resp.ContentLength >= 0 && int64(len(data)) != resp.ContentLength {
		metrics.ManifestFetchesFailed.WithLabelValues(up, "read").Inc()
		return nil, &Error{Code: CodeUnavailable, Status: http.StatusBadGateway,
			Message: fmt.Sprintf("upstream %s sent %d manifest bytes of the %d it announced", up, len(data), resp.ContentLength)}
	}
	sum := sha256.Sum256(data)
	dgst := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
	if want != nil && dgst != *want {
		metrics.ManifestFetchesFailed.WithLabelValues(up, "digest").Inc()
		return nil, &Error{Code: CodeManifestInvalid, Status: http.StatusBadGateway,
			Message: "upstream " + up + " sent a manifest whose digest is " + dgst.String() + ", not " + want.String()}
	}
	mt, verr := manifestMediaType(data, resp.Header.Get("Content-Type"))
	if verr != nil {
		metrics.ManifestFetchesFailed.WithLabelValues(up, "invalid").Inc()
		verr.Status = http.StatusBadGateway
		return nil, verr
	}
	m := &cache.Manifest{Digest: dgst, Data: data, MediaType: mt, Upstream: rt.Upstream.Name, Repo: rt.Repo, Created: h.now()}
	if err := h.store.PutManifest(m); err != nil {
		h.log.Error("caching manifest", "digest", dgst, "err", err)
	}
	return m, nil
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

// manifestMediaType validates a manifest and returns its media type: the
// mediaType field when set, else the Content-Type, else inferred from the
// content. Schema 1 and unknown types are refused.
func manifestMediaType(data []byte, contentType string) (string, *Error) {
	var doc struct {
		SchemaVersion int              `json:"schemaVersion"`
		MediaType     string           `json:"mediaType"`
		Config        *json.RawMessage `json:"config"`
		Layers        *json.RawMessage `json:"layers"`
		Manifests     *json.RawMessage `json:"manifests"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return "", errorf(CodeManifestInvalid, "upstream manifest is not valid JSON: %v", err)
	}
	if doc.SchemaVersion != 2 {
		return "", errorf(CodeManifestInvalid, "manifest schemaVersion %d is not supported (only schema 2 and OCI)", doc.SchemaVersion)
	}
	ct, _, _ := mime.ParseMediaType(contentType)
	mt := doc.MediaType
	if mt == "" {
		mt = ct
	}
	if !knownManifestType(mt) {
		switch {
		case doc.Manifests != nil:
			mt = MediaTypeOCIIndex
		case doc.Config != nil:
			mt = MediaTypeOCIManifest
		default:
			return "", errorf(CodeManifestInvalid, "unsupported manifest media type %q", truncate(mt, 100))
		}
	}
	isIndex := mt == MediaTypeOCIIndex || mt == MediaTypeDockerList
	if isIndex && doc.Manifests == nil || !isIndex && doc.Config == nil {
		return "", errorf(CodeManifestInvalid, "manifest content does not match its media type %s", mt)
	}
	// An index with image fields, or an image with children, is read one
	// way by one client and the other way by another (containerd refuses
	// both): the gate must not judge one reading while a client runs the
	// other.
	if isIndex && (doc.Config != nil || doc.Layers != nil) || !isIndex && doc.Manifests != nil {
		return "", errorf(CodeManifestInvalid, "%s is ambiguous: it has both image fields (config, layers) and index fields (manifests)", mt)
	}
	if err := checkDescriptors(doc.Config, doc.Layers, doc.Manifests, isIndex); err != nil {
		return "", errorf(CodeManifestInvalid, "upstream %s is malformed: %v", mt, err)
	}
	return mt, nil
}

// checkDescriptors checks that every descriptor of a manifest (config and
// layers) or index (children) has a sha256 digest and a size that is not
// negative: clients, the cache and the gate follow them by digest, and a
// manifest pointing nowhere must not be cached or judged.
func checkDescriptors(config, layers, manifests *json.RawMessage, isIndex bool) error {
	var descs []v1.Descriptor
	decode := func(raw *json.RawMessage, into any) error {
		if raw == nil {
			return nil
		}
		return json.Unmarshal(*raw, into)
	}
	if isIndex {
		if err := decode(manifests, &descs); err != nil {
			return fmt.Errorf("manifests: %w", err)
		}
	} else {
		var c v1.Descriptor
		if err := decode(config, &c); err != nil {
			return fmt.Errorf("config: %w", err)
		}
		if err := decode(layers, &descs); err != nil {
			return fmt.Errorf("layers: %w", err)
		}
		descs = append([]v1.Descriptor{c}, descs...)
	}
	for i, d := range descs {
		if d.Digest.Algorithm == "" {
			return fmt.Errorf("descriptor %d has no digest", i)
		}
		if d.Size < 0 {
			return fmt.Errorf("descriptor %d has a negative size", i)
		}
	}
	return nil
}

func knownManifestType(mt string) bool {
	switch mt {
	case MediaTypeOCIIndex, MediaTypeOCIManifest, MediaTypeDockerList, MediaTypeDockerSchema:
		return true
	}
	return false
}

// Resolve returns the manifest upstream/repo:ref (a tag or digest) the way
// a pull would get it: through the tag mapping and the cache. The gate is
// not consulted.
func (h *Handler) Resolve(ctx context.Context, up, repo, ref string) (*cache.Manifest, error) {
	u := h.cfg.Upstream(up)
	if u == nil {
		return nil, errorf(CodeDenied, "registry %q is not an upstream of this gatehouse", up)
	}
	rt := &Route{Kind: KindManifest, Upstream: u, Repo: repo, Ref: ref}
	if strings.Contains(ref, ":") {
		d, err := parseDigest(ref)
		if err != nil {
			return nil, err
		}
		rt.Digest, rt.ByDigest = d, true
	}
	m, _, err := h.manifest(ctx, rt)
	return m, err
}
