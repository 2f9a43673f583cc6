package e2e

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// RegistryOptions configure a docker-registry upstream.
type RegistryOptions struct {
	// Username and Password, when both set, protect the registry with
	// htpasswd (basic) auth. Empty: anonymous read and write.
	Username, Password string
}

// Registry is Debian's docker-registry (distribution 2.8) serving plain HTTP
// on a loopback port, with filesystem storage in a temporary directory.
type Registry struct {
	// Host is "127.0.0.1:port", the name clients use for it.
	Host string
	// URL is "http://" + Host.
	URL string

	opts    RegistryOptions
	port    int
	dir     string
	config  string
	auth    string // the auth section of the config
	logPath string
	proc    *Process
}

// WriteHtpasswd writes an htpasswd file at path with one user, as an
// operator would: `htpasswd -B` (bcrypt, the only format distribution and
// gatehouse accept). It returns path.
func WriteHtpasswd(t testing.TB, path, user, password string) string {
	t.Helper()
	res := runCmd(t.Context(), 30*time.Second, nil, "htpasswd", "-Bbn", user, password)
	if res.Err != nil {
		t.Fatalf("htpasswd: %v", res)
	}
	if err := os.WriteFile(path, res.Stdout, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// StartRegistry starts a docker-registry and waits until it answers /v2/.
// It is stopped in t.Cleanup.
func StartRegistry(t testing.TB, opts RegistryOptions) *Registry {
	t.Helper()
	requireE2E(t)
	dir := t.TempDir()
	r := &Registry{
		opts:    opts,
		dir:     dir,
		config:  filepath.Join(dir, "config.yml"),
		logPath: filepath.Join(dir, "registry.log"),
	}
	if opts.Username != "" && opts.Password != "" {
		r.auth = fmt.Sprintf("auth:\n  htpasswd:\n    realm: e2e\n    path: %s\n", WriteHtpasswd(t, filepath.Join(dir, "htpasswd"), opts.Username, opts.Password))
	}
	startOnFreePort(t, func(port int) error {
		r.port = port
		r.Host = loopback(port)
		r.URL = "http://" + r.Host
		r.writeConfig(t)
		return r.start(t)
	})
	return r
}

func (r *Registry) writeConfig(t testing.TB) {
	t.Helper()
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: warn
  formatter: text
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %s
  secret: e2e-not-a-secret
%s`, filepath.Join(r.dir, "storage"), r.Host, r.auth)
	if err := os.WriteFile(r.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
}

// Start restarts a stopped registry on the same port and storage.
func (r *Registry) Start(t testing.TB) {
	t.Helper()
	if err := r.start(t); err != nil {
		t.Fatal(err)
	}
}

func (r *Registry) start(t testing.TB) error {
	t.Helper()
	if r.proc != nil {
		if exited, _ := r.proc.Exited(); !exited {
			return fmt.Errorf("registry %s is already running", r.Host)
		}
	}
	r.proc = StartProcess(t, "docker-registry "+r.Host, r.logPath, nil, "docker-registry", "serve", r.config)
	return waitHTTP(r.proc, r.port, r.URL+"/v2/", 15*time.Second, func(s int) bool {
		return s == http.StatusOK || s == http.StatusUnauthorized
	})
}

// Stop stops the registry process; its storage is kept for Start.
func (r *Registry) Stop(t testing.TB) {
	t.Helper()
	if err := r.proc.Stop(t); err != nil {
		t.Logf("docker-registry %s exit: %v", r.Host, err)
	}
	// Make sure nothing answers any more: a test relying on a stopped
	// upstream must not be fooled.
	c := &http.Client{Timeout: time.Second}
	if resp, err := c.Get(r.URL + "/v2/"); err == nil {
		resp.Body.Close()
		t.Fatalf("registry %s still answers after Stop: %s", r.Host, resp.Status)
	}
}

// Log returns the registry's log so far.
func (r *Registry) Log() string { return r.proc.Log() }

// Repo names a repository on this registry.
func (r *Registry) Repo(t testing.TB, repo string) name.Repository {
	t.Helper()
	n, err := name.NewRepository(r.Host+"/"+repo, name.Insecure, name.StrictValidation)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// RemoteOptions are the go-containerregistry options to read from or write
// to this registry directly (with its credentials, if any).
func (r *Registry) RemoteOptions() []remote.Option {
	opts := []remote.Option{remote.WithTransport(http.DefaultTransport)}
	if r.opts.Username != "" {
		opts = append(opts, remote.WithAuth(&authn.Basic{Username: r.opts.Username, Password: r.opts.Password}))
	}
	return opts
}

// Tripwire is a reverse proxy to an upstream that records every request. It
// stands where a client would fall back to when the mirror (gatehouse)
// fails, so a pull still works the way it would in production, but a test
// can prove that gatehouse served everything: the tripwire stays untouched.
type Tripwire struct {
	// Host is "127.0.0.1:port".
	Host string
	// URL is "http://" + Host.
	URL string

	mu   sync.Mutex
	hits []string
	reqs []*http.Request // method and URL of each hit
}

// StartTripwire starts a tripwire in front of target (a base URL such as
// Registry.URL). An empty target makes it answer 502 to everything.
func StartTripwire(t testing.TB, target string) *Tripwire {
	t.Helper()
	return StartSlowTripwire(t, target, 0)
}

// StartSlowTripwire is StartTripwire with every request held for delay
// before it is forwarded: put between gatehouse and its upstream, it makes
// concurrent client requests overlap inside gatehouse, and counts what
// gatehouse asks upstream.
func StartSlowTripwire(t testing.TB, target string, delay time.Duration) *Tripwire {
	t.Helper()
	tw := &Tripwire{}
	var next http.Handler = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "tripwire: no upstream", http.StatusBadGateway)
	})
	if target != "" {
		u, err := url.Parse(target)
		if err != nil {
			t.Fatal(err)
		}
		next = httputil.NewSingleHostReverseProxy(u)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		tw.mu.Lock()
		tw.hits = append(tw.hits, fmt.Sprintf("%s %s (User-Agent %q)", req.Method, req.URL.RequestURI(), req.UserAgent()))
		tw.reqs = append(tw.reqs, &http.Request{Method: req.Method, URL: req.URL})
		tw.mu.Unlock()
		if delay > 0 {
			select {
			case <-time.After(delay):
			case <-req.Context().Done():
				return
			}
		}
		next.ServeHTTP(w, req)
	}))
	t.Cleanup(srv.Close)
	tw.URL = srv.URL
	tw.Host = strings.TrimPrefix(srv.URL, "http://")
	return tw
}

// Hits returns the requests the tripwire has seen.
func (tw *Tripwire) Hits() []string {
	tw.mu.Lock()
	defer tw.mu.Unlock()
	return append([]string(nil), tw.hits...)
}

// Count returns how many requests with this method had a path ending in
// suffix (e.g. "/blobs/sha256:...").
func (tw *Tripwire) Count(method, suffix string) int {
	tw.mu.Lock()
	defer tw.mu.Unlock()
	n := 0
	for _, r := range tw.reqs {
		if r.Method == method && strings.HasSuffix(r.URL.Path, suffix) {
			n++
		}
	}
	return n
}

// Reset forgets the requests seen so far.
func (tw *Tripwire) Reset() {
	tw.mu.Lock()
	tw.hits, tw.reqs = nil, nil
	tw.mu.Unlock()
}

// AssertUntouched fails the test if any request reached the tripwire, i.e.
// the client went around gatehouse.
func (tw *Tripwire) AssertUntouched(t testing.TB) {
	t.Helper()
	if hits := tw.Hits(); len(hits) > 0 {
		t.Errorf("the client bypassed gatehouse: %d request(s) reached the fallback upstream %s directly:\n  %s",
			len(hits), tw.Host, strings.Join(hits, "\n  "))
	}
}
