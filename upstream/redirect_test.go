package upstream_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/upstream"
)

// target is a server a redirect may lead to: it counts the connections
// it accepted and records the Authorization headers it was sent.
type target struct {
	*httptest.Server
	accepted atomic.Int32
	mu       sync.Mutex
	auth     []string
}

func newTarget(t *testing.T, network, addr string) *target {
	t.Helper()
	l, err := net.Listen(network, addr)
	if err != nil {
		t.Skipf("cannot listen on %s: %v", addr, err)
	}
	tg := &target{}
	tg.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tg.mu.Lock()
		tg.auth = append(tg.auth, r.Header.Get("Authorization"))
		tg.mu.Unlock()
		fmt.Fprint(w, "blob bytes")
	}))
	tg.Listener.Close()
	tg.Listener = l
	tg.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			tg.accepted.Add(1)
		}
	}
	tg.Start()
	t.Cleanup(tg.Close)
	return tg
}

// redirecting is an anonymous upstream that answers every blob request
// with a redirect to location(r).
func redirecting(t *testing.T, location func(r *http.Request) string) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		http.Redirect(w, r, location(r), http.StatusTemporaryRedirect)
	}))
	t.Cleanup(s.Close)
	return s
}

func getBlob(c *upstream.Client) (string, error) {
	resp, err := c.Do(context.Background(), http.MethodGet, "team/app", "blobs/sha256:"+strings.Repeat("a", 64), nil, nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func TestRedirectsToOtherSchemesRefused(t *testing.T) {
	for _, loc := range []string{"file:///etc/passwd", "ftp://example.com/blob", "gopher://example.com/"} {
		s := redirecting(t, func(*http.Request) string { return loc })
		_, err := getBlob(newClient(t, config.Upstream{Name: host(s), URL: s.URL}))
		if err == nil || !strings.Contains(err.Error(), "unsupported scheme") {
			t.Errorf("redirect to %s: want an unsupported-scheme error, got %v", loc, err)
		}
	}
}

func TestRedirectsToLocalAddressesRefusedWithoutConnecting(t *testing.T) {
	v4 := newTarget(t, "tcp", "127.0.0.1:0")
	_, v4port, _ := net.SplitHostPort(v4.Listener.Addr().String())
	for _, tc := range []struct {
		location string
		reason   string
		tg       *target
	}{
		{"http://" + v4.Listener.Addr().String() + "/blob", "loopback", v4},
		{"http://localhost:" + v4port + "/blob", "loopback", v4},
		{"http://169.254.169.254/latest/meta-data/", "link-local", nil},
		{"http://[fe80::1]/", "link-local", nil},
		{"http://0.0.0.0:" + v4port + "/", "unspecified", v4},
		{"http://224.0.0.1/", "multicast", nil},
	} {
		t.Run(tc.location, func(t *testing.T) {
			s := redirecting(t, func(*http.Request) string { return tc.location })
			_, err := getBlob(newClient(t, config.Upstream{Name: host(s), URL: s.URL}))
			var refused *upstream.AddressRefusedError
			if !errors.As(err, &refused) || refused.Reason != tc.reason {
				t.Fatalf("want the %s address refused, got %v", tc.reason, err)
			}
			if tc.tg != nil && tc.tg.accepted.Load() != 0 {
				t.Fatalf("gatehouse connected to the refused address")
			}
		})
	}
	t.Run("[::1]", func(t *testing.T) {
		v6 := newTarget(t, "tcp6", "[::1]:0")
		s := redirecting(t, func(*http.Request) string { return "http://" + v6.Listener.Addr().String() + "/blob" })
		_, err := getBlob(newClient(t, config.Upstream{Name: host(s), URL: s.URL}))
		var refused *upstream.AddressRefusedError
		if !errors.As(err, &refused) || v6.accepted.Load() != 0 {
			t.Fatalf("want [::1] refused without a connection, got %v (%d connections)", err, v6.accepted.Load())
		}
	})
}

// A token endpoint is dialed without a redirect: the check on the resolved
// address before connecting refuses it too.
func TestTokenEndpointOnLoopbackRefusedForNonInternalUpstream(t *testing.T) {
	tg := newTarget(t, "tcp", "127.0.0.1:0")
	_, port, _ := net.SplitHostPort(tg.Listener.Addr().String())
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// A name, not an address literal: only the resolved address shows
		// where it leads.
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="http://localhost:%s/token",service="x"`, port))
		w.WriteHeader(http.StatusUnauthorized)
	}))
	defer s.Close()
	_, err := getBlob(newClient(t, config.Upstream{Name: host(s), URL: s.URL}))
	var refused *upstream.AddressRefusedError
	if !errors.As(err, &refused) || tg.accepted.Load() != 0 {
		t.Fatalf("want the token endpoint refused without a connection, got %v (%d connections)", err, tg.accepted.Load())
	}
}

func TestInternalUpstreamFollowsRedirectsWithoutCredentials(t *testing.T) {
	tg := newTarget(t, "tcp", "127.0.0.1:0")
	_, port, _ := net.SplitHostPort(tg.Listener.Addr().String())
	// The upstream demands a token; its redirect leads to another host
	// (localhost, not 127.0.0.1), which must not get the token.
	tr := &tokenRegistry{next: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://localhost:"+port+"/cdn/blob", http.StatusTemporaryRedirect)
	})}
	s := httptest.NewServer(tr)
	defer s.Close()
	c := newClient(t, config.Upstream{Name: host(s), URL: s.URL, Internal: true, Username: "u", Password: "p"})
	body, err := getBlob(c)
	if err != nil || body != "blob bytes" {
		t.Fatalf("redirect of an internal upstream not followed: %q, %v", body, err)
	}
	if tr.tokens.Load() == 0 {
		t.Fatal("the upstream was never authenticated to; the test proves nothing")
	}
	tg.mu.Lock()
	defer tg.mu.Unlock()
	for _, a := range tg.auth {
		if a != "" {
			t.Fatalf("credentials forwarded to the redirect target: %q", a)
		}
	}
}

func TestRedirectLoopStops(t *testing.T) {
	var hops atomic.Int32
	var s *httptest.Server
	s = redirecting(t, func(r *http.Request) string {
		hops.Add(1)
		return s.URL + "/v2/team/app/blobs/next" + fmt.Sprint(hops.Load())
	})
	_, err := getBlob(newClient(t, config.Upstream{Name: host(s), URL: s.URL}))
	if err == nil || !strings.Contains(err.Error(), "stopped after 5 redirects") {
		t.Fatalf("want the redirect loop stopped, got %v", err)
	}
	if n := hops.Load(); n != 5 {
		t.Fatalf("%d redirects followed, want 5", n)
	}
}
