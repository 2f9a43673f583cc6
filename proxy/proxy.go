// Package proxy is gatehouse's HTTP surface: the read side of the OCI
// distribution API, routed to the configured upstreams through the cache.
package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sync/singleflight"

	"github.com/gatehouse/gatehouse/cache"
	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/gate"
	"github.com/gatehouse/gatehouse/proxy/upstream"
)

// Upstream is what the proxy needs of an upstream registry client.
type Upstream interface {
	// Do sends a GET or HEAD for /v2/<repo>/<suffix>. A 2xx response is
	// returned for the caller to close; any other outcome is an error
	// (*upstream.Error for an HTTP or network failure).
	Do(ctx context.Context, method, repo, suffix string, q url.Values, hdr http.Header) (*http.Response, error)
}

var _ Upstream = (*upstream.Client)(nil)

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
	cfg       *config.Config
	store     *cache.Store
	upstreams map[string]Upstream // by upstream name
	log       *slog.Logger
	now       func() time.Time
	gate      Gate // nil: everything is served

	flight singleflight.Group // manifest fetches and tag revalidations
}

// New returns the handler. upstreams maps every configured upstream's name
// to its client.
func New(cfg *config.Config, store *cache.Store, upstreams map[string]Upstream, log *slog.Logger) (*Handler, error) {
	for _, u := range cfg.Upstreams {
		if upstreams[u.Name] == nil {
			return nil, fmt.Errorf("proxy: no client for upstream %s", u.Name)
		}
	}
	return &Handler{cfg: cfg, store: store, upstreams: upstreams, log: log, now: time.Now}, nil
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

func (h *Handler) client(rt *Route) Upstream { return h.upstreams[rt.Upstream.Name] }

// SetGate installs the gate; call it before serving. The gate reads blobs
// through the handler (OpenBlob), hence the separate step.
func (h *Handler) SetGate(g Gate) { h.gate = g }
