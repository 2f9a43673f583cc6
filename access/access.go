// Package access guards gatehouse's listener: HTTPS with certificates
// reloaded when their files change, and client credentials for pulls
// (htpasswd basic auth, static bearer tokens, client certificates) and,
// separately, for the JSON API. Everything is off unless configured
// (server.tls, server.auth).
package access

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"golang.org/x/crypto/bcrypt"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/metrics"
	"github.com/gatehouse/gatehouse/proxy"
)

// Realms of the WWW-Authenticate challenges and of the auth failure metric.
const (
	pullRealm = "gatehouse"
	apiRealm  = "gatehouse-api"
)

// Guard checks client credentials. A nil source means that kind of
// credential is not configured.
type Guard struct {
	log            *slog.Logger
	users          *watched[htpasswd]
	tokens         *watched[tokenSet]
	apiTokens      *watched[tokenSet]
	clientCerts    bool
	protectMetrics bool
	verified       verifiedCache
	dummyHash      []byte // compared against when the user is unknown
}

// New loads the credential files of cfg. Errors name the config field.
func New(cfg config.Server, log *slog.Logger) (*Guard, error) {
	g := &Guard{log: log, clientCerts: cfg.TLS.ClientCAFile != "", protectMetrics: cfg.Auth.ProtectMetrics}
	var err error
	if p := cfg.Auth.Htpasswd; p != "" {
		if g.users, err = newWatched("htpasswd", []string{p}, func() (htpasswd, error) { return loadHtpasswd(p) }, log); err != nil {
			return nil, fmt.Errorf("config: server.auth.htpasswd: %w", err)
		}
		// The cost of the dummy matches the file's, so an unknown user
		// takes as long to refuse as a wrong password.
		cost := bcrypt.DefaultCost
		for _, h := range g.users.get() {
			cost, _ = bcrypt.Cost(h)
			break
		}
		if g.dummyHash, err = bcrypt.GenerateFromPassword([]byte("gatehouse-unknown-user"), cost); err != nil {
			return nil, err
		}
	}
	if p := cfg.Auth.TokensFile; p != "" {
		if g.tokens, err = newWatched("tokens", []string{p}, func() (tokenSet, error) { return loadTokens(p) }, log); err != nil {
			return nil, fmt.Errorf("config: server.auth.tokensFile: %w", err)
		}
	}
	if p := cfg.Auth.APITokenFile; p != "" {
		if g.apiTokens, err = newWatched("apiTokens", []string{p}, func() (tokenSet, error) { return loadTokens(p) }, log); err != nil {
			return nil, fmt.Errorf("config: server.auth.apiTokenFile: %w", err)
		}
	}
	return g, nil
}

// PullAuth reports whether pulls need credentials.
func (g *Guard) PullAuth() bool { return g.users != nil || g.tokens != nil || g.clientCerts }

// APIAuth reports whether the JSON API needs credentials.
func (g *Guard) APIAuth() bool { return g.apiTokens != nil || g.PullAuth() }

// Pulls wraps the registry API (/v2/): without credentials the answer is
// 401 UNAUTHORIZED with a Basic challenge, which containerd, skopeo, podman
// and docker all answer with their configured credentials.
func (g *Guard) Pulls(next http.Handler) http.Handler {
	if !g.PullAuth() {
		return next
	}
	return g.wrap(next, "pull", func(r *http.Request) (string, string, string) {
		id, reason := g.pullIdentity(r)
		return pullRealm, id, reason
	})
}

// API wraps the JSON API (and the web UI): it takes an API token when
// server.auth.apiTokenFile is set, else the pull credentials.
func (g *Guard) API(next http.Handler) http.Handler {
	if !g.APIAuth() {
		return next
	}
	return g.wrap(next, "api", func(r *http.Request) (string, string, string) {
		if g.apiTokens == nil {
			id, reason := g.pullIdentity(r)
			return pullRealm, id, reason
		}
		id, reason := g.tokenIdentity(r, g.apiTokens.get())
		return apiRealm, id, reason
	})
}

// wrap serves next to requests that check admits (an empty reason),
// recording the identity, and refuses the others.
func (g *Guard) wrap(next http.Handler, kind string, check func(*http.Request) (realm, id, reason string)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		realm, id, reason := check(r)
		if reason != "" {
			g.refuse(w, r, kind, realm, reason)
			return
		}
		setIdentity(r, id)
		next.ServeHTTP(w, r)
	})
}

// Metrics wraps /metrics: open unless server.auth.protectMetrics is set,
// then guarded like the API.
func (g *Guard) Metrics(next http.Handler) http.Handler {
	if !g.protectMetrics {
		return next
	}
	return g.API(next)
}

// Failure reasons (the reason label of gatehouse_auth_failures_total).
const (
	reasonMissing   = "missing"
	reasonMalformed = "malformed"
	reasonInvalid   = "invalid"
)

// pullIdentity returns who sent r, or why r is refused.
func (g *Guard) pullIdentity(r *http.Request) (id, reason string) {
	if g.clientCerts && r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
		return "cert:" + r.TLS.VerifiedChains[0][0].Subject.CommonName, ""
	}
	if user, password, ok := r.BasicAuth(); ok {
		known := false
		if g.users != nil {
			var hash []byte
			if hash, known = g.users.get()[user]; known && g.verified.check(user, password, hash) {
				return user, ""
			}
		}
		if g.tokens != nil {
			if name, ok := g.tokens.get().match(password); ok {
				return name, ""
			}
		}
		if g.users != nil && !known {
			// Unknown user: spend the time a known one would have cost,
			// in a bcrypt slot like theirs, so that a flood of unknown
			// users waits its turn too.
			_ = compareInSlot(g.dummyHash, password)
		}
		return "", reasonInvalid
	}
	if g.tokens == nil {
		return "", headerReason(r)
	}
	return g.tokenIdentity(r, g.tokens.get())
}

// tokenIdentity checks a bearer token, or a token sent as the password of
// basic auth, against set.
func (g *Guard) tokenIdentity(r *http.Request, set tokenSet) (id, reason string) {
	secret, ok := bearer(r)
	if !ok {
		if _, password, basic := r.BasicAuth(); basic {
			secret, ok = password, true
		}
	}
	if !ok {
		return "", headerReason(r)
	}
	if name, ok := set.match(secret); ok {
		return name, ""
	}
	return "", reasonInvalid
}

func bearer(r *http.Request) (string, bool) {
	scheme, secret, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	secret = strings.TrimSpace(secret)
	return secret, secret != ""
}

// headerReason tells a request without usable credentials: none at all,
// or an Authorization header of a scheme or form not accepted.
func headerReason(r *http.Request) string {
	if r.Header.Get("Authorization") == "" {
		return reasonMissing
	}
	if _, ok := bearer(r); ok {
		// A bearer token where only basic auth is configured.
		return reasonInvalid
	}
	return reasonMalformed
}

// refuse answers 401 with a Basic challenge and an OCI UNAUTHORIZED body.
// The credentials sent are never logged; the basic user name is.
func (g *Guard) refuse(w http.ResponseWriter, r *http.Request, kind, realm, reason string) {
	metrics.AuthFailures.WithLabelValues(kind, reason).Inc()
	level := slog.LevelWarn
	if reason == reasonMissing {
		// Every client's first request, before it answers the challenge.
		level = slog.LevelDebug
	}
	user, _, _ := r.BasicAuth()
	g.log.Log(r.Context(), level, "client authentication failed", "realm", kind, "reason", reason,
		"user", user, "remote", r.RemoteAddr, "path", r.URL.Path)
	w.Header().Set("WWW-Authenticate", fmt.Sprintf("Basic realm=%q", realm))
	msg := "authentication required"
	if reason != reasonMissing {
		msg = "authentication failed: " + reason + " credentials"
	}
	proxy.WriteError(w, r, proxy.CodeUnauthorized, msg)
}

type identityKey struct{}

// Track returns r with room for the client identity that a guard
// establishes further down the handler chain, and a function that returns
// it once the request is served ("" when none was needed or given). The
// access log wraps every request with it.
func Track(r *http.Request) (*http.Request, func() string) {
	id := new(string)
	return r.WithContext(context.WithValue(r.Context(), identityKey{}, id)), func() string { return *id }
}

func setIdentity(r *http.Request, id string) {
	if p, ok := r.Context().Value(identityKey{}).(*string); ok {
		*p = id
	}
}
