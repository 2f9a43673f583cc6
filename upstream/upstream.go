// Package upstream is gatehouse's client for one upstream registry: the
// anonymous or credentialed token flow of go-containerregistry's transport,
// per-upstream TLS and timeouts, and retries of idempotent requests that
// failed before anything reached the client.
package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	dockerconfig "github.com/docker/cli/cli/config"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/metrics"
)

// ManifestAccept lists every manifest media type gatehouse handles, sent as
// the Accept header of manifest requests so that upstream returns indexes
// and OCI manifests as they are (never a converted schema1).
const ManifestAccept = string(types.OCIImageIndex) + ", " + string(types.DockerManifestList) + ", " +
	string(types.OCIManifestSchema1) + ", " + string(types.DockerManifestSchema2)

// maxErrorBody caps how much of an upstream error body is read.
const maxErrorBody = 64 << 10

// maxTransports bounds the per-repository transports (and their tokens)
// kept in memory.
const maxTransports = 4096

// Client talks to one upstream registry.
type Client struct {
	name    string // as clients name it, e.g. docker.io
	base    *url.URL
	reg     name.Registry
	auth    authn.Authenticator
	rt      http.RoundTripper // TLS, timeouts, retries; no auth
	secrets []string          // removed from every error message
	log     *slog.Logger
	guard   *guard   // which addresses redirects and token endpoints may reach
	limit   *limiter // maxConcurrentFetches

	mu    sync.Mutex
	repos map[string]http.RoundTripper // repository → authenticated transport

	rateRemaining atomic.Int64 // last ratelimit-remaining seen, -1 unknown
}

// New builds the client for an upstream from its (finished) configuration.
func New(u *config.Upstream, log *slog.Logger) (*Client, error) {
	base, err := url.Parse(u.URL)
	if err != nil {
		return nil, fmt.Errorf("upstream %s: url: %w", u.Name, err)
	}
	opts := []name.Option{name.StrictValidation}
	if base.Scheme == "http" {
		opts = append(opts, name.Insecure)
	}
	reg, err := name.NewRegistry(base.Host, opts...)
	if err != nil {
		return nil, fmt.Errorf("upstream %s: %w", u.Name, err)
	}
	auth, err := authenticator(u, base.Host)
	if err != nil {
		return nil, fmt.Errorf("upstream %s: credentials: %w", u.Name, err)
	}
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: u.InsecureSkipVerify} //nolint:gosec // opt-in per upstream
	if u.CAFile != "" {
		pem, err := os.ReadFile(u.CAFile)
		if err != nil {
			return nil, fmt.Errorf("upstream %s: caFile: %w", u.Name, err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("upstream %s: caFile %s: no PEM certificates", u.Name, u.CAFile)
		}
		tlsConf.RootCAs = pool
	}
	g := newGuard(u.Name, base, u.Internal, net.Dialer{Timeout: u.ConnectTimeout.D(), KeepAlive: 30 * time.Second})
	ht := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           g.DialContext,
		TLSClientConfig:       tlsConf,
		TLSHandshakeTimeout:   u.ConnectTimeout.D(),
		ResponseHeaderTimeout: u.ResponseHeaderTimeout.D(),
		ExpectContinueTimeout: time.Second,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		ForceAttemptHTTP2:     true,
		// Bytes must reach clients exactly as upstream stored them: never
		// let the transport negotiate and undo a content encoding.
		DisableCompression: true,
	}
	secrets, err := secretsOf(auth)
	if err != nil {
		return nil, fmt.Errorf("upstream %s: credentials: %w", u.Name, err)
	}
	c := &Client{
		name:    u.Name,
		base:    base,
		reg:     reg,
		auth:    auth,
		secrets: secrets,
		rt:      &retryTransport{inner: ht, upstream: u.Name, retries: *u.Retries, base: 200 * time.Millisecond, maxWait: maxRetryAfter},
		log:     log.With("upstream", u.Name),
		guard:   g,
		limit:   newLimiter(u.Name, u.MaxConcurrentFetches, u.ResponseHeaderTimeout.D()),
		repos:   map[string]http.RoundTripper{},
	}
	c.rateRemaining.Store(-1)
	metrics.InitUpstream(u.Name)
	return c, nil
}

// Name returns the upstream's name as clients use it.
func (c *Client) Name() string { return c.name }

// RateLimitRemaining returns the last `ratelimit-remaining` value the
// upstream sent (Docker Hub), or -1 when none was seen.
func (c *Client) RateLimitRemaining() int64 { return c.rateRemaining.Load() }

func authenticator(u *config.Upstream, host string) (authn.Authenticator, error) {
	if u.DockerConfig != "" {
		f, err := os.Open(u.DockerConfig)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		cf, err := dockerconfig.LoadFromReader(f)
		if err != nil {
			return nil, fmt.Errorf("dockerConfig %s: %w", u.DockerConfig, err)
		}
		keys := []string{u.Name, host}
		if u.Name == config.DockerHub {
			keys = append(keys, "https://index.docker.io/v1/", "index.docker.io")
		}
		for _, k := range keys {
			if ac, ok := cf.GetAuthConfigs()[k]; ok && (ac.Username != "" || ac.Auth != "" || ac.IdentityToken != "") {
				return authn.FromConfig(authn.AuthConfig{
					Username: ac.Username, Password: ac.Password, Auth: ac.Auth,
					IdentityToken: ac.IdentityToken, RegistryToken: ac.RegistryToken,
				}), nil
			}
		}
		return nil, fmt.Errorf("dockerConfig %s has no entry for %s", u.DockerConfig, u.Name)
	}
	if u.Username == "" {
		return authn.Anonymous, nil
	}
	pw, err := u.Secret()
	if err != nil {
		return nil, err
	}
	return &authn.Basic{Username: u.Username, Password: pw}, nil
}

// secretsOf lists the strings of a credential that must never be shown:
// the password and tokens, and the base64 forms a registry might echo back
// from an Authorization header.
func secretsOf(auth authn.Authenticator) ([]string, error) {
	ac, err := auth.Authorization()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, s := range []string{ac.Password, ac.Auth, ac.IdentityToken, ac.RegistryToken} {
		if len(s) >= 4 { // shorter ones would blank out ordinary words
			out = append(out, s)
		}
	}
	if ac.Password != "" {
		out = append(out, base64.StdEncoding.EncodeToString([]byte(ac.Username+":"+ac.Password)))
	}
	if ac.Auth != "" {
		if dec, err := base64.StdEncoding.DecodeString(ac.Auth); err == nil {
			if _, pw, ok := strings.Cut(string(dec), ":"); ok && len(pw) >= 4 {
				out = append(out, pw)
			}
		}
	}
	return out, nil
}

// scrub removes the upstream's secrets from an error message: an upstream
// (or a proxy in front of it) may echo the credentials it was sent.
func (c *Client) scrub(e *Error) *Error {
	for _, s := range c.secrets {
		e.Message = strings.ReplaceAll(e.Message, s, "<redacted>")
	}
	return e
}

// transport returns the authenticated transport for a repository, pinging
// the registry and fetching a pull token the first time.
func (c *Client) transport(ctx context.Context, repo string) (http.RoundTripper, error) {
	c.mu.Lock()
	t, ok := c.repos[repo]
	c.mu.Unlock()
	if ok {
		return t, nil
	}
	scope := c.reg.Repo(repo).Scope(transport.PullScope)
	t, err := transport.NewWithContext(ctx, c.reg, c.auth, c.rt, []string{scope})
	if err != nil {
		return nil, c.wrapErr(err)
	}
	c.mu.Lock()
	if len(c.repos) >= maxTransports {
		for k := range c.repos { // drop an arbitrary one; tokens are cheap to renew
			delete(c.repos, k)
			break
		}
	}
	c.repos[repo] = t
	c.mu.Unlock()
	return t, nil
}

// Do sends method (GET or HEAD) for /v2/<repo>/<suffix> with the query q.
// A 2xx response is returned with its body for the caller to close; any
// other status becomes an *Error with the body read (capped) and closed.
func (c *Client) Do(ctx context.Context, method, repo, suffix string, q url.Values, hdr http.Header) (*http.Response, error) {
	u := *c.base
	u.Path = "/v2/" + repo + "/" + suffix
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
	if err != nil {
		return nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	// The slot covers the registry ping and token exchange that a first
	// request for a repository makes, as well as the request itself.
	release, err := c.limit.acquire(ctx)
	if err != nil {
		return nil, err
	}
	rt, err := c.transport(ctx, repo)
	if err != nil {
		release()
		c.countHandshakeFailure(err)
		return nil, err
	}
	hc := &http.Client{Transport: rt, CheckRedirect: c.guard.checkRedirect}
	start := time.Now()
	resp, err := hc.Do(req)
	metrics.UpstreamDuration.WithLabelValues(c.name).Observe(time.Since(start).Seconds())
	if err != nil {
		release()
		metrics.UpstreamRequests.WithLabelValues(c.name, "error").Inc()
		return nil, c.wrapErr(err)
	}
	metrics.UpstreamRequests.WithLabelValues(c.name, strconv.Itoa(resp.StatusCode)).Inc()
	if v := resp.Header.Get("Ratelimit-Remaining"); v != "" {
		// "76;w=21600": the count before the window.
		if n, err := strconv.ParseInt(strings.SplitN(v, ";", 2)[0], 10, 64); err == nil {
			c.rateRemaining.Store(n)
		}
	}
	c.log.Debug("upstream request", "method", method, "repo", repo, "path", suffix,
		"status", resp.StatusCode, "duration", time.Since(start))
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		resp.Body = &releasingBody{ReadCloser: resp.Body, release: release}
		return resp, nil
	}
	defer release()
	defer resp.Body.Close()
	return nil, c.scrub(readError(c.name, resp))
}

// maxRetryAfter is the longest Retry-After (of a 429 or 503) gatehouse
// waits out itself before retrying; a longer one goes to the client.
const maxRetryAfter = 3 * time.Second

// retryTransport retries GET and HEAD requests that failed to connect or got
// a 5xx (other than 501), with exponential backoff and jitter, and those
// that got a 429 or 503 whose Retry-After is at most maxWait, after that
// wait. Nothing has reached gatehouse's client at this point, so a retry is
// invisible to it.
type retryTransport struct {
	inner    http.RoundTripper
	upstream string
	retries  int
	base     time.Duration
	maxWait  time.Duration
}

func (t *retryTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	idempotent := req.Method == http.MethodGet || req.Method == http.MethodHead
	for attempt := 0; ; attempt++ {
		resp, err := t.inner.RoundTrip(req)
		if !idempotent || attempt >= t.retries || req.Context().Err() != nil {
			return resp, err
		}
		d := t.base << attempt
		d += time.Duration(rand.Int64N(int64(d)/5 + 1))
		reason := "network"
		if resp != nil {
			reason = strconv.Itoa(resp.StatusCode/100) + "xx"
			if ra, ok := retryAfter(resp.Header.Get("Retry-After"), time.Now()); ok {
				if ra > t.maxWait {
					return resp, err // the client is told to come back later
				}
				d = ra
			}
			if resp.StatusCode == http.StatusTooManyRequests {
				if resp.Header.Get("Retry-After") == "" {
					return resp, err // no hint how long: pass it on
				}
				reason = "429"
			}
		}
		if !retryable(resp, err) {
			return resp, err
		}
		if resp != nil {
			io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody))
			resp.Body.Close()
		}
		metrics.UpstreamRetries.WithLabelValues(t.upstream, reason).Inc()
		select {
		case <-time.After(d):
		case <-req.Context().Done():
			return nil, req.Context().Err()
		}
	}
}

// retryAfter parses a Retry-After value: delay seconds or an HTTP date.
func retryAfter(v string, now time.Time) (time.Duration, bool) {
	if v == "" {
		return 0, false
	}
	if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && n >= 0 {
		return time.Duration(n) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0), true
	}
	return 0, false
}

func retryable(resp *http.Response, err error) bool {
	if err != nil {
		var refused *AddressRefusedError
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || errors.As(err, &refused) {
			return false
		}
		// A TLS mismatch does not heal with a retry; failing fast also lets
		// go-containerregistry's ping fall back to plain HTTP at once for
		// an http:// upstream.
		var certErr *tls.CertificateVerificationError
		var recErr tls.RecordHeaderError
		var alert tls.AlertError
		if errors.As(err, &certErr) || errors.As(err, &recErr) || errors.As(err, &alert) ||
			strings.Contains(err.Error(), "server gave HTTP response to HTTPS client") {
			return false
		}
		return true
	}
	switch resp.StatusCode {
	case http.StatusTooManyRequests,
		http.StatusInternalServerError, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}
