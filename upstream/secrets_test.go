package upstream_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/metrics"
	"github.com/gatehouse/gatehouse/upstream"
)

// echoingRegistry refuses everything and echoes what it was sent (the
// Authorization header, decoded basic credentials) in its error bodies and
// headers, as a misbehaving registry or a debugging proxy in front of one
// might. challenge is "basic" or "bearer" (with a token endpoint that also
// refuses and echoes).
func echoingRegistry(challenge string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		echo := r.Header.Get("Authorization")
		if u, p, ok := r.BasicAuth(); ok {
			echo += " user=" + u + " password=" + p
		}
		w.Header().Set("X-Echo", echo)
		switch {
		case r.URL.Path == "/token":
		case challenge == "basic":
			w.Header().Set("WWW-Authenticate", `Basic realm="echo"`)
		case r.URL.Path == "/v2/" || r.Header.Get("Authorization") == "":
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="http://%s/token",service="echo"`, r.Host))
		}
		w.WriteHeader(http.StatusUnauthorized)
		fmt.Fprintf(w, `{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials: %s","detail":%q}]}`, echo, echo)
	})
}

// TestCredentialsNeverShown configures distinctive upstream credentials in
// every form gatehouse accepts and checks that they appear in none of: the
// error of a refused request, the log (JSON, debug level), the metrics.
func TestCredentialsNeverShown(t *testing.T) {
	const user, password = "robot-user", "Pw-9f3c1e7b-DoNotLeak"
	basicB64 := base64.StdEncoding.EncodeToString([]byte(user + ":" + password))
	dir := t.TempDir()
	pwFile := filepath.Join(dir, "pw")
	if err := os.WriteFile(pwFile, []byte(password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	if err := metrics.Register(reg, metrics.Sources{}); err != nil {
		t.Fatal(err)
	}
	for _, challenge := range []string{"basic", "bearer"} {
		s := httptest.NewServer(echoingRegistry(challenge))
		defer s.Close()
		dockerConfig := filepath.Join(dir, challenge+"-config.json")
		if err := os.WriteFile(dockerConfig, []byte(fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, host(s), basicB64)), 0o600); err != nil {
			t.Fatal(err)
		}
		for name, u := range map[string]config.Upstream{
			"password":     {Username: user, Password: password},
			"passwordFile": {Username: user, PasswordFile: pwFile},
			"dockerConfig": {DockerConfig: dockerConfig},
		} {
			t.Run(challenge+"/"+name, func(t *testing.T) {
				u.Name, u.URL = host(s), s.URL
				cfg := &config.Config{DataDir: "x", Upstreams: []config.Upstream{u}}
				if err := cfg.Finish(); err != nil {
					t.Fatal(err)
				}
				var logBuf bytes.Buffer
				c, err := upstream.New(&cfg.Upstreams[0], slog.New(slog.NewJSONHandler(&logBuf, &slog.HandlerOptions{Level: slog.LevelDebug})))
				if err != nil {
					t.Fatal(err)
				}
				_, err = c.Do(context.Background(), http.MethodGet, "team/app", "manifests/v1", nil, nil)
				if err == nil {
					t.Fatal("the refusing upstream was not reported")
				}
				if !strings.Contains(err.Error(), "401") {
					t.Errorf("error %q does not report the 401", err)
				}
				if !strings.Contains(err.Error(), "bad credentials") {
					t.Errorf("error %q lost the upstream's message", err)
				}
				slog.New(slog.NewJSONHandler(&logBuf, nil)).Error("as the proxy logs it", "err", err)

				rec := httptest.NewRecorder()
				promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
				for where, text := range map[string]string{"error": fmt.Sprintf("%v %+v", err, err), "log": logBuf.String(), "metrics": rec.Body.String()} {
					for _, secret := range []string{password, basicB64} {
						if strings.Contains(text, secret) {
							t.Errorf("the %s shows the secret %q:\n%s", where, secret, text)
						}
					}
				}
			})
		}
	}
}

// The echoing upstream does echo: without scrubbing, the test above would
// see the secret.
func TestEchoingRegistryEchoes(t *testing.T) {
	s := httptest.NewServer(echoingRegistry("basic"))
	defer s.Close()
	req, _ := http.NewRequest(http.MethodGet, s.URL+"/v2/", nil)
	req.SetBasicAuth("u", "visible-password")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(body), "visible-password") {
		t.Fatalf("body %q does not echo the password", body)
	}
}
