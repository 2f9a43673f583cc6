// Package pull is gatehouse's content layer: manifests and blobs of the
// configured upstreams, fetched once, verified and cached, with no HTTP
// server in sight. Everything that reads content goes through it: the
// proxy (for clients), the gate's image reader (for the scanner), the
// signature verifier (through pull/transport) and `gatehouse check`.
//
// Like distribution's proxy-as-storage-wrapper and spegel's oci.Store,
// Content is a small interface over the cache:
//
//   - Manifest(ctx, upstream, repo, ref): a tag goes through the cached
//     mapping while its TTL lasts, else a HEAD upstream (stale-if-error);
//     a digest is served from the cache, else fetched once (single
//     flight), capped at 4 MiB, verified and validated, then cached.
//   - Blob(ctx, upstream, repo, digest): a stream of the committed blob, or
//     of the one upstream fetch of it in flight, joined by every reader.
//
// It owns the tag TTL and revalidation, single flight, manifest
// verification and validation (done once, here) and the upstream source.
// It knows nothing of the gate: the proxy asks the gate before it reads
// content for a client, and the gate reads through this package.
package pull

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/gatehouse/gatehouse/cache"
	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/upstream"
)

// Upstream is what the content layer needs of an upstream registry client.
type Upstream interface {
	// Do sends a GET or HEAD for /v2/<repo>/<suffix>. A 2xx response is
	// returned for the caller to close; any other outcome is an error
	// (*upstream.Error for an HTTP or network failure).
	Do(ctx context.Context, method, repo, suffix string, q url.Values, hdr http.Header) (*http.Response, error)
}

var _ Upstream = (*upstream.Client)(nil)

// Content serves the content of the configured upstreams through the
// cache. It is safe for concurrent use.
type Content struct {
	cfg       *config.Config
	store     *cache.Store
	upstreams map[string]Upstream         // by upstream name
	names     map[string]*config.Upstream // by upstream name
	log       *slog.Logger
	now       func() time.Time

	flight singleflight.Group // manifest fetches and tag revalidations
}

// validationVersion numbers the rules of validate: when they get stricter,
// it goes up, and New sweeps the cache once of manifests they refuse.
// 1: ambiguous index/image documents and descriptors without a digest
// (issue 12).
const validationVersion = 1

// New returns the content layer. upstreams maps every configured
// upstream's name to its client.
func New(cfg *config.Config, store *cache.Store, upstreams map[string]Upstream, log *slog.Logger) (*Content, error) {
	for _, u := range cfg.Upstreams {
		if upstreams[u.Name] == nil {
			return nil, fmt.Errorf("pull: no client for upstream %s", u.Name)
		}
	}
	if log == nil {
		log = slog.Default()
	}
	// A cache written under older rules may hold manifests these refuse:
	// they go before anything is served or judged (fail closed: a sweep
	// that cannot run stops the start).
	removed, err := store.SweepManifests(validationVersion, func(m *cache.Manifest) bool {
		_, err := validate(m.Data, m.MediaType)
		return err == nil
	})
	if err != nil {
		return nil, fmt.Errorf("pull: checking cached manifests: %w", err)
	}
	if removed > 0 {
		log.Warn("removed cached manifests that current validation refuses", "count", removed)
	}
	names := map[string]*config.Upstream{}
	for i := range cfg.Upstreams {
		names[cfg.Upstreams[i].Name] = &cfg.Upstreams[i]
	}
	return &Content{cfg: cfg, store: store, upstreams: upstreams, names: names, log: log, now: time.Now}, nil
}

// SetClock replaces time.Now (tests of the tag TTL).
func (c *Content) SetClock(now func() time.Time) { c.now = now }

// upstream returns the configuration and client of upstream up: its name
// (what the proxy's router resolved, one map lookup), else an alias.
func (c *Content) upstream(up string) (*config.Upstream, Upstream, error) {
	u := c.names[up]
	if u == nil {
		u = c.cfg.Upstream(up)
	}
	if u == nil || c.upstreams[u.Name] == nil {
		return nil, nil, &Error{Code: CodeDenied, Message: fmt.Sprintf("registry %q is not an upstream of this gatehouse", up)}
	}
	return u, c.upstreams[u.Name], nil
}

// The OCI error codes the content layer fails with (OCI distribution
// spec, "Error Codes", plus distribution's UNAVAILABLE).
const (
	CodeDenied          = "DENIED"
	CodeDigestInvalid   = "DIGEST_INVALID"
	CodeManifestInvalid = "MANIFEST_INVALID"
	CodeUnavailable     = "UNAVAILABLE"
	CodeUnknown         = "UNKNOWN"
)

// Error is a failure of the content layer with the OCI error code a client
// should see. Upstream failures are *upstream.Error, cache verification
// failures the cache's errors; this type is for the rest.
type Error struct {
	Code    string
	Message string
	// BadUpstream: upstream sent something wrong (an HTTP client gets a
	// 502 Bad Gateway).
	BadUpstream bool
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// badUpstream returns an *Error for content upstream got wrong.
func badUpstream(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...), BadUpstream: true}
}

// IsNotFound reports whether err means upstream does not have the content.
func IsNotFound(err error) bool {
	var ue *upstream.Error
	return errors.As(err, &ue) && ue.NotFound()
}
