// Package proxy is gatehouse's HTTP surface: the read side of the OCI
// distribution API. It is a thin adapter: route the request, ask the gate,
// read the content from the content layer (package pull), write the
// response or an OCI error. It imports neither the scanner nor the
// signature verifier (a boundary test checks it), and nothing calls back
// into it.
package proxy

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/url"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/cache"
	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/gate"
	"github.com/gatehouse/gatehouse/pull"
)

// Content is what the proxy serves: the content layer (*pull.Content).
type Content interface {
	// Manifest returns upstream/repo:ref, ref a tag or digest.
	Manifest(ctx context.Context, up, repo, ref string) (*pull.Manifest, error)
	// Blob returns a stream of a blob, joining any fetch in flight.
	Blob(ctx context.Context, up, repo string, dgst v1.Hash) (*cache.Stream, error)
	// BlobSize returns a blob's size without downloading it.
	BlobSize(ctx context.Context, up, repo string, dgst v1.Hash) (int64, error)
	// Tags lists a page of a repository's tags.
	Tags(ctx context.Context, up, repo string, q url.Values) (*pull.TagList, error)
	// Referrers lists the descriptors of the manifests that refer to dgst.
	Referrers(ctx context.Context, up, repo string, dgst v1.Hash, artifactType string) ([]json.RawMessage, error)
}

var _ Content = (*pull.Content)(nil)

// Gate is what the proxy asks before it serves a manifest or a blob. The
// gate package behind it owns the scanners; the proxy never imports them.
type Gate interface {
	// Check judges a manifest about to be served: a verdict, a
	// *gate.Pending (retry later), or an error (fail closed).
	Check(ctx context.Context, s gate.Subject) (*gate.Verdict, error)
	// BlobAllowed reports whether a blob may be served to a client of
	// upstream/repo.
	BlobAllowed(ctx context.Context, upstream, repo string, dgst v1.Hash) (bool, error)
}

var _ Gate = (*gate.Gate)(nil)

// Handler serves /v2/.
type Handler struct {
	cfg     *config.Config
	content Content
	gate    Gate // nil: everything is served
	log     *slog.Logger
}

// New returns the handler. A nil gate serves everything (tests, and the
// proxy's own benchmarks).
func New(cfg *config.Config, content Content, g Gate, log *slog.Logger) *Handler {
	if log == nil {
		log = slog.Default()
	}
	h := &Handler{cfg: cfg, content: content, log: log}
	if g != nil {
		h.gate = g
	}
	return h
}

// ServeHTTP routes a /v2/ request and writes the response or an OCI error.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	rt, rerr := route(h.cfg, r)
	if rerr == nil {
		if rt.NS != "" {
			// OCI distribution (main): a proxy using ns SHOULD echo it.
			w.Header().Set("OCI-Namespace", rt.NS)
		}
		rerr = h.serve(w, r, rt)
	}
	if rerr != nil {
		if rerr.status() >= 500 {
			h.log.Warn("request failed", "method", r.Method, "path", r.URL.Path, "code", rerr.Code, "err", rerr.Message)
		}
		writeError(w, r, rerr)
	}
}

func (h *Handler) serve(w http.ResponseWriter, r *http.Request, rt *Route) *Error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		return errorf(CodeUnsupported, "gatehouse is a read-only pull-through cache; %s is not supported", r.Method)
	}
	switch rt.Kind {
	case KindBase:
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", "2")
		if r.Method == http.MethodGet {
			w.Write([]byte("{}"))
		}
		return nil
	case KindManifest:
		return h.serveManifest(w, r, rt)
	case KindBlob:
		if r.Method == http.MethodHead {
			return h.headBlob(w, r, rt)
		}
		return h.getBlob(w, r, rt)
	case KindTags:
		return h.serveTags(w, r, rt)
	case KindReferrers:
		return h.serveReferrers(w, r, rt)
	case KindUpload:
		return errorf(CodeUnsupported, "gatehouse is a read-only pull-through cache; uploads are not supported")
	}
	return errorf(CodeUnsupported, "unsupported request")
}
