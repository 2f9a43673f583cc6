package upstream_test

import (
	"context"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/upstream"
)

// tokenRegistry is an upstream that demands a Bearer token, issued by its
// own token endpoint, as Docker Hub and ghcr.io do. When user is set, the
// token endpoint requires those basic credentials.
type tokenRegistry struct {
	next       http.Handler
	user, pass string
	tokens     atomic.Int32
	failFirst  atomic.Int32 // answer this many /v2/<repo> requests with 503
	rateHeader string
}

func (tr *tokenRegistry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/token" {
		if tr.user != "" {
			u, p, ok := r.BasicAuth()
			if !ok || u != tr.user || p != tr.pass {
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}`, http.StatusUnauthorized)
				return
			}
		}
		if !strings.HasPrefix(r.URL.Query().Get("scope"), "repository:") {
			http.Error(w, "no scope", http.StatusBadRequest)
			return
		}
		tr.tokens.Add(1)
		fmt.Fprint(w, `{"token":"tok-123"}`)
		return
	}
	if r.Header.Get("Authorization") != "Bearer tok-123" {
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="http://%s/token",service="test"`, r.Host))
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	if r.URL.Path != "/v2/" && tr.failFirst.Load() > 0 {
		tr.failFirst.Add(-1)
		http.Error(w, "try again", http.StatusServiceUnavailable)
		return
	}
	if tr.rateHeader != "" {
		w.Header().Set("Ratelimit-Remaining", tr.rateHeader)
	}
	tr.next.ServeHTTP(w, r)
}

func quietRegistry() http.Handler { return registry.New(registry.Logger(log.New(io.Discard, "", 0))) }

func newClient(t *testing.T, u config.Upstream) *upstream.Client {
	t.Helper()
	cfg := &config.Config{DataDir: "x", Upstreams: []config.Upstream{u}}
	if err := cfg.Finish(); err != nil {
		t.Fatal(err)
	}
	c, err := upstream.New(&cfg.Upstreams[0], slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func host(s *httptest.Server) string {
	return strings.TrimPrefix(strings.TrimPrefix(s.URL, "http://"), "https://")
}

// get asks for the tag list of an empty repository: the in-process
// registry answers 404 NAME_UNKNOWN, which proves the request got through
// authentication.
func get(c *upstream.Client) error {
	resp, err := c.Do(context.Background(), http.MethodGet, "team/app", "tags/list", nil, nil)
	if err == nil {
		resp.Body.Close()
	}
	return err
}

func wantNotFound(t *testing.T, err error) {
	t.Helper()
	var ue *upstream.Error
	if !errors.As(err, &ue) || !ue.NotFound() {
		t.Fatalf("want an upstream 404 (request authorised), got %v", err)
	}
}

func TestAnonymousBearerTokenFlow(t *testing.T) {
	tr := &tokenRegistry{next: quietRegistry()}
	s := httptest.NewServer(tr)
	defer s.Close()
	c := newClient(t, config.Upstream{Name: host(s), URL: s.URL})
	for i := 0; i < 3; i++ {
		wantNotFound(t, get(c))
	}
	if n := tr.tokens.Load(); n != 1 {
		t.Fatalf("token fetched %d times for one repository, want 1", n)
	}
}

func TestCredentials(t *testing.T) {
	tr := &tokenRegistry{next: quietRegistry(), user: "alice", pass: "s3cret"}
	s := httptest.NewServer(tr)
	defer s.Close()

	t.Run("username/password", func(t *testing.T) {
		wantNotFound(t, get(newClient(t, config.Upstream{Name: host(s), URL: s.URL, Username: "alice", Password: "s3cret"})))
	})
	t.Run("passwordFile", func(t *testing.T) {
		f := filepath.Join(t.TempDir(), "pw")
		os.WriteFile(f, []byte("s3cret\n"), 0o600)
		wantNotFound(t, get(newClient(t, config.Upstream{Name: host(s), URL: s.URL, Username: "alice", PasswordFile: f})))
	})
	t.Run("docker config.json", func(t *testing.T) {
		f := filepath.Join(t.TempDir(), "config.json")
		auth := base64.StdEncoding.EncodeToString([]byte("alice:s3cret"))
		os.WriteFile(f, []byte(fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, host(s), auth)), 0o600)
		wantNotFound(t, get(newClient(t, config.Upstream{Name: host(s), URL: s.URL, DockerConfig: f})))
	})
	t.Run("wrong password", func(t *testing.T) {
		err := get(newClient(t, config.Upstream{Name: host(s), URL: s.URL, Username: "alice", Password: "nope"}))
		var ue *upstream.Error
		if !errors.As(err, &ue) || ue.Status != http.StatusUnauthorized {
			t.Fatalf("want a 401 upstream error, got %v", err)
		}
		if strings.Contains(err.Error(), "nope") {
			t.Fatalf("error leaks the password: %v", err)
		}
	})
	t.Run("anonymous refused", func(t *testing.T) {
		if err := get(newClient(t, config.Upstream{Name: host(s), URL: s.URL})); err == nil {
			t.Fatal("anonymous request succeeded against a registry that needs credentials")
		}
	})
}

func TestCustomCA(t *testing.T) {
	s := httptest.NewTLSServer(quietRegistry())
	defer s.Close()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.Certificate().Raw}), 0o600)

	wantNotFound(t, get(newClient(t, config.Upstream{Name: host(s), URL: s.URL, CAFile: ca})))
	wantNotFound(t, get(newClient(t, config.Upstream{Name: host(s), URL: s.URL, InsecureSkipVerify: true})))
	// Without the CA the upstream is refused. (On a loopback address
	// go-containerregistry also tries plain HTTP, so the error may be the
	// TLS server's 400 rather than the certificate.)
	if err := get(newClient(t, config.Upstream{Name: host(s), URL: s.URL})); err == nil {
		t.Fatal("untrusted certificate accepted")
	}
}

func TestRetriesServerErrorsButNotNotFound(t *testing.T) {
	tr := &tokenRegistry{next: quietRegistry()}
	s := httptest.NewServer(tr)
	defer s.Close()
	retries := 2
	c := newClient(t, config.Upstream{Name: host(s), URL: s.URL, Retries: &retries})
	tr.failFirst.Store(2)
	wantNotFound(t, get(c)) // two 503s, then the answer
	tr.failFirst.Store(3)
	err := get(c)
	var ue *upstream.Error
	if !errors.As(err, &ue) || ue.Status != http.StatusServiceUnavailable {
		t.Fatalf("after exhausting retries: want 503, got %v", err)
	}
}

func TestConnectionRefusedIsRetriedThenReported(t *testing.T) {
	s := httptest.NewServer(quietRegistry())
	url := s.URL
	s.Close() // nothing listens there now
	zero := 1
	c := newClient(t, config.Upstream{Name: strings.TrimPrefix(url, "http://"), URL: url, Retries: &zero})
	err := get(c)
	var ue *upstream.Error
	if !errors.As(err, &ue) || ue.Status != 0 {
		t.Fatalf("want a network error, got %v", err)
	}
}

func TestRateLimitRemaining(t *testing.T) {
	tr := &tokenRegistry{next: quietRegistry(), rateHeader: "76;w=21600"}
	s := httptest.NewServer(tr)
	defer s.Close()
	c := newClient(t, config.Upstream{Name: host(s), URL: s.URL})
	if c.RateLimitRemaining() != -1 {
		t.Fatal("rate limit known before any request")
	}
	get(c)
	if got := c.RateLimitRemaining(); got != 76 {
		t.Fatalf("RateLimitRemaining = %d, want 76", got)
	}
}
