package access

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/crypto/bcrypt"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/metrics"
)

const (
	pullToken = "pull-token-0123456789abcdef"
	apiToken  = "api-token-fedcba9876543210"
)

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func htpasswdLine(t *testing.T, user, password string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return user + ":" + string(h) + "\n"
}

// newGuard builds a guard from files written into a temporary directory;
// the log goes to the returned buffer as JSON.
func newGuard(t *testing.T, auth config.ServerAuth) (*Guard, *bytes.Buffer) {
	t.Helper()
	var logBuf bytes.Buffer
	g, err := New(config.Server{Auth: auth}, slog.New(slog.NewJSONHandler(&logBuf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	return g, &logBuf
}

func fullAuth(t *testing.T) config.ServerAuth {
	dir := t.TempDir()
	return config.ServerAuth{
		Htpasswd:     writeFile(t, dir, "htpasswd", "# nodes\n"+htpasswdLine(t, "alice", "wonderland")+htpasswdLine(t, "bob", "builder")),
		TokensFile:   writeFile(t, dir, "tokens", "ci "+pullToken+"\n"),
		APITokenFile: writeFile(t, dir, "api-tokens", "dashboard "+apiToken+"\n"),
	}
}

// serve runs one request through h (which records the identity) and
// returns the response and the identity.
func serve(h func(http.Handler) http.Handler, method, path string, header http.Header) (*httptest.ResponseRecorder, string) {
	r := httptest.NewRequest(method, path, nil)
	r.Header = header
	r, id := Track(r)
	rec := httptest.NewRecorder()
	h(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })).ServeHTTP(rec, r)
	return rec, id()
}

func basic(user, password string) http.Header {
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.SetBasicAuth(user, password)
	return r.Header
}

func hdr(v string) http.Header { return http.Header{"Authorization": {v}} }

func TestGuard(t *testing.T) {
	g, logBuf := newGuard(t, fullAuth(t))
	for _, tc := range []struct {
		name   string
		api    bool
		header http.Header
		id     string // "" means refused
		reason string
	}{
		{"pull without credentials", false, nil, "", "missing"},
		{"pull with good basic", false, basic("alice", "wonderland"), "alice", ""},
		{"pull with good basic, second user", false, basic("bob", "builder"), "bob", ""},
		{"pull with wrong password", false, basic("alice", "builder"), "", "invalid"},
		{"pull with unknown user", false, basic("mallory", "wonderland"), "", "invalid"},
		{"pull with good bearer", false, hdr("Bearer " + pullToken), "ci", ""},
		{"pull with bearer in lower case", false, hdr("bearer " + pullToken), "ci", ""},
		{"pull with token as basic password", false, basic("anyone", pullToken), "ci", ""},
		{"pull with token as the password of an htpasswd user", false, basic("alice", pullToken), "ci", ""},
		{"pull with bad bearer", false, hdr("Bearer " + pullToken + "x"), "", "invalid"},
		{"pull with empty bearer", false, hdr("Bearer "), "", "malformed"},
		{"pull with unknown scheme", false, hdr("Digest username=alice"), "", "malformed"},
		{"pull with broken basic", false, hdr("Basic !!!"), "", "malformed"},
		{"pull with the API token", false, hdr("Bearer " + apiToken), "", "invalid"},
		{"pull with the API token as password", false, basic("x", apiToken), "", "invalid"},
		{"api without credentials", true, nil, "", "missing"},
		{"api with the API token", true, hdr("Bearer " + apiToken), "dashboard", ""},
		{"api with the API token as basic password", true, basic("ui", apiToken), "dashboard", ""},
		{"api with a pull token", true, hdr("Bearer " + pullToken), "", "invalid"},
		{"api with pull basic credentials", true, basic("alice", "wonderland"), "", "invalid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wrap, realm, kind := g.Pulls, "gatehouse", "pull"
			if tc.api {
				wrap, realm, kind = g.API, "gatehouse-api", "api"
			}
			before := testutil.ToFloat64(metrics.AuthFailures.WithLabelValues(kind, tc.reason))
			rec, id := serve(wrap, http.MethodGet, "/v2/library/alpine/manifests/3", tc.header)
			if tc.id != "" {
				if rec.Code != http.StatusOK || id != tc.id {
					t.Fatalf("got %d %q as %q; want 200 as %q", rec.Code, rec.Body, id, tc.id)
				}
				return
			}
			if rec.Code != http.StatusUnauthorized {
				t.Fatalf("got %d %q; want 401", rec.Code, rec.Body)
			}
			if id != "" {
				t.Errorf("refused request recorded identity %q", id)
			}
			if got, want := rec.Header().Get("WWW-Authenticate"), `Basic realm="`+realm+`"`; got != want {
				t.Errorf("WWW-Authenticate %q, want %q", got, want)
			}
			var body struct {
				Errors []struct{ Code, Message string }
			}
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || len(body.Errors) != 1 || body.Errors[0].Code != "UNAUTHORIZED" {
				t.Errorf("body %q is not an OCI UNAUTHORIZED error (%v)", rec.Body, err)
			}
			if after := testutil.ToFloat64(metrics.AuthFailures.WithLabelValues(kind, tc.reason)); after != before+1 {
				t.Errorf("auth_failures_total{realm=%q,reason=%q} went from %v to %v", kind, tc.reason, before, after)
			}
		})
	}
	// Failed attempts are logged with the user name, never the secret.
	for _, secret := range []string{"wonderland", "builder", pullToken, apiToken} {
		if strings.Contains(logBuf.String(), secret) {
			t.Errorf("the log holds secret %q:\n%s", secret, logBuf)
		}
	}
	if !strings.Contains(logBuf.String(), `"user":"mallory"`) {
		t.Errorf("the log does not name the user of a failed attempt:\n%s", logBuf)
	}
}

func TestGuardHeadUnauthorized(t *testing.T) {
	g, _ := newGuard(t, fullAuth(t))
	rec, _ := serve(g.Pulls, http.MethodHead, "/v2/library/alpine/manifests/3", nil)
	if rec.Code != http.StatusUnauthorized || rec.Body.Len() != 0 || rec.Header().Get("WWW-Authenticate") == "" {
		t.Errorf("HEAD: %d, %d body bytes, challenge %q; want 401, no body, a challenge", rec.Code, rec.Body.Len(), rec.Header().Get("WWW-Authenticate"))
	}
}

func TestGuardOffByDefault(t *testing.T) {
	g, _ := newGuard(t, config.ServerAuth{})
	for name, wrap := range map[string]func(http.Handler) http.Handler{"pulls": g.Pulls, "api": g.API, "metrics": g.Metrics} {
		if rec, _ := serve(wrap, http.MethodGet, "/", nil); rec.Code != http.StatusOK {
			t.Errorf("%s without any auth configured: %d", name, rec.Code)
		}
	}
}

func TestGuardAPIFallsBackToPullCredentials(t *testing.T) {
	auth := fullAuth(t)
	auth.APITokenFile = ""
	g, _ := newGuard(t, auth)
	if rec, id := serve(g.API, http.MethodGet, "/api/v1/policy", basic("alice", "wonderland")); rec.Code != http.StatusOK || id != "alice" {
		t.Errorf("API with pull credentials and no apiTokenFile: %d as %q", rec.Code, id)
	}
	if rec, _ := serve(g.API, http.MethodGet, "/api/v1/policy", nil); rec.Code != http.StatusUnauthorized {
		t.Errorf("API without credentials while pulls need them: %d", rec.Code)
	}
	// /metrics stays open unless protectMetrics is set.
	if rec, _ := serve(g.Metrics, http.MethodGet, "/metrics", nil); rec.Code != http.StatusOK {
		t.Errorf("/metrics: %d", rec.Code)
	}
	auth.ProtectMetrics = true
	g, _ = newGuard(t, auth)
	if rec, _ := serve(g.Metrics, http.MethodGet, "/metrics", nil); rec.Code != http.StatusUnauthorized {
		t.Errorf("/metrics with protectMetrics: %d", rec.Code)
	}
}

// The API guard alone (apiTokenFile without pull auth) leaves pulls open.
func TestGuardAPIOnly(t *testing.T) {
	g, _ := newGuard(t, config.ServerAuth{APITokenFile: writeFile(t, t.TempDir(), "api", apiToken+"\n")})
	if rec, _ := serve(g.Pulls, http.MethodGet, "/v2/", nil); rec.Code != http.StatusOK {
		t.Errorf("pull: %d", rec.Code)
	}
	if rec, id := serve(g.API, http.MethodGet, "/api/v1/policy", hdr("Bearer "+apiToken)); rec.Code != http.StatusOK || id != "token-line-1" {
		t.Errorf("api: %d as %q", rec.Code, id)
	}
}

func TestCredentialFileErrors(t *testing.T) {
	dir := t.TempDir()
	md5 := writeFile(t, dir, "md5", htpasswdLine(t, "alice", "x")+"bob:$apr1$abcdefgh$0123456789abcdefghijkl\n")
	for _, tc := range []struct {
		name string
		auth config.ServerAuth
		want []string
	}{
		{"MD5 htpasswd", config.ServerAuth{Htpasswd: md5}, []string{"server.auth.htpasswd", "line 2", `"bob"`, "bcrypt", "htpasswd -B"}},
		{"plain htpasswd", config.ServerAuth{Htpasswd: writeFile(t, dir, "plain", "alice:secret\n")}, []string{"server.auth.htpasswd", "line 1", "bcrypt"}},
		{"no colon", config.ServerAuth{Htpasswd: writeFile(t, dir, "nocolon", "alice\n")}, []string{"server.auth.htpasswd", "line 1", "user:hash"}},
		{"empty htpasswd", config.ServerAuth{Htpasswd: writeFile(t, dir, "empty", "# nobody\n")}, []string{"server.auth.htpasswd", "no users"}},
		{"short token", config.ServerAuth{TokensFile: writeFile(t, dir, "short", "ci short\n")}, []string{"server.auth.tokensFile", "line 1", "(ci)", "shorter"}},
		{"three fields", config.ServerAuth{TokensFile: writeFile(t, dir, "three", "\n\na b c\n")}, []string{"server.auth.tokensFile", "line 3"}},
		{"duplicate API token", config.ServerAuth{APITokenFile: writeFile(t, dir, "dup", "a "+apiToken+"\nb "+apiToken+"\n")}, []string{"server.auth.apiTokenFile", "line 2", "twice"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(config.Server{Auth: tc.auth}, slog.New(slog.DiscardHandler))
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "short\n") || strings.Contains(err.Error(), apiToken) {
				t.Errorf("error %q shows a token", err)
			}
		})
	}
}

// A changed file is read again; a change that does not parse keeps the
// previous contents and is counted.
func TestCredentialReload(t *testing.T) {
	auth := fullAuth(t)
	g, _ := newGuard(t, auth)
	g.users.every, g.tokens.every = 0, 0
	const newToken = "rotated-token-00000000000000"
	check := func(h http.Header, want int) {
		t.Helper()
		if rec, _ := serve(g.Pulls, http.MethodGet, "/v2/", h); rec.Code != want {
			t.Errorf("%v: %d, want %d", h, rec.Code, want)
		}
	}
	check(hdr("Bearer "+pullToken), http.StatusOK)
	check(hdr("Bearer "+newToken), http.StatusUnauthorized)

	writeFile(t, filepath.Dir(auth.TokensFile), "tokens", "ci2 "+newToken+"\n")
	check(hdr("Bearer "+newToken), http.StatusOK)
	check(hdr("Bearer "+pullToken), http.StatusUnauthorized)

	errsBefore := testutil.ToFloat64(metrics.AccessReloads.WithLabelValues("htpasswd", "error"))
	writeFile(t, filepath.Dir(auth.Htpasswd), "htpasswd", "alice:{SHA}notbcrypt\n")
	check(basic("alice", "wonderland"), http.StatusOK) // the old file stays in force
	if got := testutil.ToFloat64(metrics.AccessReloads.WithLabelValues("htpasswd", "error")); got != errsBefore+1 {
		t.Errorf("reload errors %v -> %v", errsBefore, got)
	}
	writeFile(t, filepath.Dir(auth.Htpasswd), "htpasswd", htpasswdLine(t, "alice", "looking-glass"))
	check(basic("alice", "wonderland"), http.StatusUnauthorized)
	check(basic("alice", "looking-glass"), http.StatusOK)
}

// Between looks at the files, a request costs no stat.
func TestWatchedChecksAtMostEveryInterval(t *testing.T) {
	dir := t.TempDir()
	p := writeFile(t, dir, "f", "1")
	loads := 0
	w, err := newWatched("test", []string{p}, func() (string, error) {
		loads++
		b, err := os.ReadFile(p)
		return string(b), err
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	w.every = time.Hour
	writeFile(t, dir, "f", "22")
	if got := w.get(); got != "1" || loads != 1 {
		t.Errorf("within the interval: %q after %d loads", got, loads)
	}
	w.checked.Store(0)
	if got := w.get(); got != "22" || loads != 2 {
		t.Errorf("after the interval: %q after %d loads", got, loads)
	}
}

func TestVerifiedCacheSkipsBcryptOnRepeat(t *testing.T) {
	hash, _ := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	var c verifiedCache
	if !c.check("u", "pw", hash) || len(c.ok) != 1 {
		t.Fatal("good password refused or not remembered")
	}
	if c.check("u", "wrong", hash) || len(c.ok) != 1 {
		t.Fatal("wrong password accepted or remembered")
	}
	other, _ := bcrypt.GenerateFromPassword([]byte("other"), bcrypt.MinCost)
	if c.check("u", "pw", other) {
		t.Fatal("a remembered password passed against a changed hash")
	}
}

// bcrypt runs in bounded slots; remembered credentials need none, so pulls
// of known clients go on while a flood of wrong passwords waits.
func TestBcryptSlotsBoundComparisons(t *testing.T) {
	hash, _ := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	var c verifiedCache
	if !c.check("u", "pw", hash) {
		t.Fatal("good password refused")
	}
	// Take every slot, as a flood of wrong passwords would.
	for range cap(bcryptSlots) {
		bcryptSlots <- struct{}{}
	}
	hit := make(chan bool)
	go func() { hit <- c.check("u", "pw", hash) }()
	select {
	case ok := <-hit:
		if !ok {
			t.Fatal("remembered credentials refused while the slots are taken")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("remembered credentials waited for a bcrypt slot")
	}
	miss := make(chan bool)
	go func() { miss <- c.check("u", "wrong", hash) }()
	for range cap(bcryptSlots) {
		<-bcryptSlots
	}
	if <-miss {
		t.Fatal("wrong password accepted")
	}
}

// Every bcrypt comparison takes a slot: the dummy one for an unknown user
// too, so a flood of logins as unknown users cannot use more CPUs than the
// slots allow.
func TestBcryptSlotsBoundUnknownUsers(t *testing.T) {
	g, _ := newGuard(t, fullAuth(t))
	var (
		mu                             sync.Mutex
		inFlight, most, calls, outside int
	)
	bcryptCompare = func(hash, password []byte) error {
		mu.Lock()
		inFlight++
		most, calls = max(most, inFlight), calls+1
		if len(bcryptSlots) == 0 {
			outside++ // no slot taken, not even this comparison's
		}
		mu.Unlock()
		err := bcrypt.CompareHashAndPassword(hash, password)
		mu.Lock()
		inFlight--
		mu.Unlock()
		return err
	}
	t.Cleanup(func() { bcryptCompare = bcrypt.CompareHashAndPassword })

	n := 4*cap(bcryptSlots) + 4
	var wg sync.WaitGroup
	for i := range n {
		user := fmt.Sprintf("mallory%d", i)
		if i%4 == 0 {
			user = "alice" // a known user with a wrong password
		}
		wg.Go(func() {
			if rec, _ := serve(g.Pulls, http.MethodGet, "/v2/", basic(user, "guess")); rec.Code != http.StatusUnauthorized {
				t.Errorf("%s: got %d, want 401", user, rec.Code)
			}
		})
	}
	wg.Wait()
	if calls != n {
		t.Errorf("%d bcrypt comparisons for %d failed logins; want one each", calls, n)
	}
	if outside != 0 {
		t.Errorf("%d of %d bcrypt comparisons ran while no slot was taken", outside, calls)
	}
	if most > cap(bcryptSlots) {
		t.Errorf("%d bcrypt comparisons ran at once; the slots allow %d", most, cap(bcryptSlots))
	}
}
