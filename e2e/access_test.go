package e2e

import (
	"crypto/tls"
	"encoding/base64"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse/gatehouse/access/accesstest"
)

// Distinctive secrets: none of them may ever show up in gatehouse's log,
// metrics, API answers, error bodies or `gatehouse config` output.
const (
	accessUpstreamPassword = "Upstream-Pw-7c4e1d9a"
	accessWrongPassword    = "Wrong-Upstream-Pw-2b8f"
	accessNodePassword     = "Node-Pw-5e0a3f61"
	accessPullToken        = "pull-token-93b1c7e5d2a4f608"
	accessAPIToken         = "api-token-41d6e8a0b3c5f792"
)

func basicHeader(user, password string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+password))
}

// TestAccessControl: gatehouse serves HTTPS with its own CA and requires
// credentials. containerd (hosts.toml `ca` and an Authorization header, or
// ctr --user answering the Basic challenge) and skopeo (--src-creds) pull
// with them and are refused without; the JSON API takes only its own token.
// Then no secret of the run is anywhere gatehouse shows things.
func TestAccessControl(t *testing.T) {
	requireGatehouse(t)
	reg := StartRegistry(t, RegistryOptions{Username: "robot", Password: accessUpstreamPassword})
	img := reg.PushImage(t, "e2e/private", "v1", SmallImage(11))

	dir := t.TempDir()
	auth := &GatehouseAuth{
		Htpasswd:     WriteHtpasswd(t, filepath.Join(dir, "htpasswd"), "node", accessNodePassword),
		TokensFile:   writeTestFile(t, dir, "tokens", "ci-runner "+accessPullToken+"\n"),
		APITokenFile: writeTestFile(t, dir, "api-tokens", "dashboard "+accessAPIToken+"\n"),
	}
	up := reg.Upstream()
	up.Aliases = []string{skopeoUpstream}
	// An upstream entry with a wrong password, whose refusal reaches the
	// client as an error body.
	wrong := GatehouseUpstream{Name: "wrong.e2e", URL: reg.URL, Username: "robot", Password: accessWrongPassword}
	ca := accesstest.NewCA(t)
	gh := StartGatehouse(t, GatehouseConfig{Upstreams: []GatehouseUpstream{up, wrong}, TLS: ca, Auth: auth})
	if !strings.HasPrefix(gh.URL, "https://") {
		t.Fatalf("gatehouse URL %s is not HTTPS", gh.URL)
	}
	want := reg.Content(t, img.Repo, img.Digest, nil)
	ref := img.Ref(reg.Host)

	t.Run("containerd", func(t *testing.T) {
		ctrd := StartContainerd(t)
		for _, tc := range []struct {
			name   string
			header map[string]string
			user   string
			id     string // "" means refused
		}{
			{name: "no credentials"},
			{name: "wrong password in hosts.toml header", header: map[string]string{"Authorization": basicHeader("node", "wrong")}},
			{name: "basic auth in hosts.toml header", header: map[string]string{"Authorization": basicHeader("node", accessNodePassword)}, id: "node"},
			{name: "bearer token in hosts.toml header", header: map[string]string{"Authorization": "Bearer " + accessPullToken}, id: "ci-runner"},
			{name: "ctr --user answering the challenge", user: "node:" + accessNodePassword, id: "node"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				// No fallback host: what ctr says comes from gatehouse.
				ctrd.SetHosts(t, reg.Host, Hosts{Server: gh.URL, CA: gh.CAFile, Header: tc.header})
				ctrd.Reset(t)
				res := ctrd.Pull(t, ref, PullOptions{User: tc.user})
				if tc.id == "" {
					if res.Err == nil {
						t.Fatal("pull without valid credentials succeeded")
					}
					t.Logf("ctr says: %s", res.LastLine())
					if out := res.Output(); !strings.Contains(out, "401") && !strings.Contains(out, "nauthorized") {
						t.Errorf("ctr's error does not show the 401:\n%s", out)
					}
					return
				}
				if res.Err != nil {
					t.Fatalf("pull failed: %v\n%s", res.Err, res.Output())
				}
				ctrd.AssertContent(t, want)
				if !strings.Contains(gh.Log(), `"client":"`+tc.id+`"`) {
					t.Errorf("the access log does not name the client %q", tc.id)
				}
			})
		}
	})

	t.Run("skopeo", func(t *testing.T) {
		sk := NewSkopeo(t)
		// containers/image trusts the *.crt files of --src-cert-dir.
		certDir := filepath.Join(sk.Dir, "certs")
		if err := os.Mkdir(certDir, 0o700); err != nil {
			t.Fatal(err)
		}
		ca, err := os.ReadFile(gh.CAFile)
		if err != nil {
			t.Fatal(err)
		}
		writeTestFile(t, certDir, "ca.crt", string(ca))
		// Path prefix routing: gatehouse itself is the registry named.
		src := "docker://" + gh.Host + "/" + skopeoUpstream + "/" + img.Repo + ":" + img.Tag
		for _, tc := range []struct {
			name  string
			creds []string
			ok    bool
		}{
			{"no credentials", []string{"--src-no-creds"}, false},
			{"wrong password", []string{"--src-creds", "node:wrong"}, false},
			{"--src-creds", []string{"--src-creds", "node:" + accessNodePassword}, true},
			{"token as password", []string{"--src-creds", "any:" + accessPullToken}, true},
		} {
			t.Run(tc.name, func(t *testing.T) {
				out, err := os.MkdirTemp(sk.Dir, "copy-")
				if err != nil {
					t.Fatal(err)
				}
				args := append([]string{"copy", "--src-cert-dir", certDir, "--retry-times", "0", "--preserve-digests"}, tc.creds...)
				res := sk.Run(t, append(args, src, "dir:"+out)...)
				if !tc.ok {
					if res.Err == nil {
						t.Fatal("copy without valid credentials succeeded")
					}
					if o := res.Output(); !strings.Contains(o, "401") && !strings.Contains(strings.ToLower(o), "unauthorized") {
						t.Errorf("skopeo's error does not show the 401:\n%s", o)
					}
					return
				}
				if res.Err != nil {
					t.Fatalf("skopeo copy failed: %v", res)
				}
				AssertDir(t, out, img.Digest.String(), want)
			})
		}

		// As a registries.conf mirror, skopeo drops --src-creds (they are
		// for the registry named); the mirror's credentials come from the
		// auth file, keyed by gatehouse's host.
		tw := StartTripwire(t, reg.URL)
		mirror := NewSkopeo(t, SkopeoRegistry{Prefix: skopeoUpstream, Location: tw.Host, Mirrors: []string{gh.Host + "/" + skopeoUpstream}})
		authFile := writeTestFile(t, mirror.Dir, "auth.json",
			`{"auths":{"`+gh.Host+`":{"auth":"`+base64.StdEncoding.EncodeToString([]byte("node:"+accessNodePassword))+`"}}}`)
		out, err := os.MkdirTemp(mirror.Dir, "copy-")
		if err != nil {
			t.Fatal(err)
		}
		res := mirror.Run(t, "copy", "--src-cert-dir", certDir, "--authfile", authFile, "--retry-times", "0", "--preserve-digests",
			"docker://"+img.Ref(skopeoUpstream), "dir:"+out)
		if res.Err != nil {
			t.Fatalf("skopeo copy through the mirror with an auth file: %v", res)
		}
		AssertDir(t, out, img.Digest.String(), want)
		tw.AssertUntouched(t)
	})

	t.Run("API and probes", func(t *testing.T) {
		for _, tc := range []struct {
			path   string
			header []string
			status int
		}{
			{"/api/v1/policy", nil, http.StatusUnauthorized},
			{"/api/v1/policy", []string{"Authorization: " + basicHeader("node", accessNodePassword)}, http.StatusUnauthorized},
			{"/api/v1/policy", []string{"Authorization: Bearer " + accessPullToken}, http.StatusUnauthorized},
			{"/api/v1/policy", []string{"Authorization: Bearer " + accessAPIToken}, http.StatusOK},
			{"/v2/", []string{"Authorization: Bearer " + accessAPIToken}, http.StatusUnauthorized},
			{"/v2/", []string{"Authorization: Bearer " + accessPullToken}, http.StatusOK},
			{"/healthz", nil, http.StatusOK},
			{"/readyz", nil, http.StatusOK},
			{"/metrics", nil, http.StatusOK},
		} {
			resp := gh.Do(t, http.MethodGet, tc.path, tc.header...)
			if resp.Status != tc.status {
				t.Errorf("GET %s with %d header(s): %s; want %d", tc.path, len(tc.header), resp, tc.status)
			}
			if resp.Status == http.StatusUnauthorized {
				if resp.Header.Get("WWW-Authenticate") == "" || len(resp.OCIErrors()) == 0 || resp.OCIErrors()[0].Code != "UNAUTHORIZED" {
					t.Errorf("GET %s: 401 without a challenge or an UNAUTHORIZED body: %v %s", tc.path, resp.Header, resp)
				}
			}
		}
	})

	t.Run("certificate renewal", func(t *testing.T) {
		serial := func() int64 {
			conn, err := tls.Dial("tcp", gh.Host, &tls.Config{RootCAs: ca.Pool})
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			return conn.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
		}
		if got := serial(); got != 1 {
			t.Fatalf("serial %d, want the first certificate's 1", got)
		}
		ca.Issue(t, gh.CertFile, gh.KeyFile, 2, "127.0.0.1", "localhost")
		// gatehouse looks at the files at most once a second.
		deadline := time.Now().Add(30 * time.Second)
		for serial() != 2 {
			if time.Now().After(deadline) {
				t.Fatal("the renewed certificate (serial 2) is not served after 30s")
			}
			time.Sleep(100 * time.Millisecond)
		}
		if !strings.Contains(gh.Log(), "reloaded a changed file") {
			t.Error("the reload is not logged")
		}
	})

	t.Run("no secret shown", func(t *testing.T) {
		pull := "Authorization: Bearer " + accessPullToken
		api := "Authorization: Bearer " + accessAPIToken
		refused := gh.Do(t, http.MethodGet, "/v2/wrong.e2e/"+img.Repo+"/manifests/"+img.Tag, pull)
		if refused.Status < 400 {
			t.Fatalf("pull through the upstream with the wrong password: %s", refused)
		}
		shown := map[string]string{
			"error body of the refused upstream": string(refused.Body) + refused.Header.Get("X-Gatehouse-Error"),
			"/metrics":                           string(gh.Do(t, http.MethodGet, "/metrics").Body),
		}
		for _, p := range []string{"/api/v1/policy", "/api/v1/images", "/api/v1/denials"} {
			shown[p] = string(gh.Do(t, http.MethodGet, p, api).Body)
		}
		res := gh.Run(t, "config")
		if res.Err != nil {
			t.Fatalf("gatehouse config: %v", res)
		}
		shown["gatehouse config"] = res.Output()
		if !strings.Contains(shown["gatehouse config"], "<redacted>") {
			t.Errorf("gatehouse config shows no redacted password:\n%s", shown["gatehouse config"])
		}
		shown["log"] = gh.Log()
		secrets := []string{accessUpstreamPassword, accessWrongPassword, accessNodePassword, accessPullToken, accessAPIToken,
			base64.StdEncoding.EncodeToString([]byte("robot:" + accessUpstreamPassword)),
			base64.StdEncoding.EncodeToString([]byte("robot:" + accessWrongPassword)),
			base64.StdEncoding.EncodeToString([]byte("node:" + accessNodePassword))}
		for where, text := range shown {
			for _, s := range secrets {
				if strings.Contains(text, s) {
					t.Errorf("%s shows the secret %q", where, s)
				}
			}
		}
		if t.Failed() {
			t.Logf("log:\n%s", shown["log"])
		}
	})
}

func writeTestFile(t testing.TB, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
