package e2e

import (
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// TestUpstreamAuth: an upstream behind htpasswd auth. Gatehouse carries the
// credentials, so containerd pulls without any; with wrong or missing
// credentials the pull fails with gatehouse's error, not a confusing one.
func TestUpstreamAuth(t *testing.T) {
	requireGatehouse(t)
	reg := StartRegistry(t, RegistryOptions{Username: "alice", Password: "correct horse"})
	img := reg.PushImage(t, "e2e/private", "v1", SmallImage(7))
	if _, err := remote.Get(reg.Repo(t, img.Repo).Tag(img.Tag)); err == nil {
		t.Fatalf("the upstream serves %s anonymously; the test needs it protected", img.Ref(reg.Host))
	}

	t.Run("right credentials", func(t *testing.T) {
		s := newContainerdSetup(t, reg, nil)
		s.check(t, pullCases(t, reg, img, img)[0])
	})

	for _, tc := range []struct{ name, user, password string }{
		{"wrong password", "alice", "wrong"},
		{"no credentials", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := reg.Upstream()
			up.Username, up.Password = tc.user, tc.password
			gh := StartGatehouse(t, GatehouseConfig{Upstreams: []GatehouseUpstream{up}})
			ctrd := StartContainerd(t)
			// No fallback: the error the user sees must be gatehouse's.
			ctrd.SetHosts(t, reg.Host, Hosts{Server: gh.URL})

			res := ctrd.Pull(t, img.Ref(reg.Host), PullOptions{})
			if res.Err == nil {
				t.Fatalf("pull through gatehouse with %s for the upstream succeeded", tc.name)
			}
			out := res.Output()
			t.Logf("ctr says: %s", res.LastLine())

			ns := "?ns=" + strings.ReplaceAll(reg.Host, ":", "%3A")
			for _, method := range []string{http.MethodHead, http.MethodGet} {
				resp := gh.Do(t, method, "/v2/"+img.Repo+"/manifests/"+img.Tag+ns)
				t.Logf("%s manifest through gatehouse: %s", method, resp)
				switch {
				case resp.Status < 400:
					t.Errorf("%s manifest: %s; want an error", method, resp)
				case resp.Status == http.StatusNotFound:
					t.Errorf("%s manifest: 404 hides the upstream's auth failure: %s", method, resp)
				}
				if method == http.MethodGet {
					errs := resp.OCIErrors()
					if len(errs) == 0 {
						t.Errorf("GET manifest: body is not an OCI error: %q", resp.Body)
					} else if msg := strings.ToLower(errs[0].Message + " " + string(errs[0].Detail)); !strings.Contains(msg, "auth") && !strings.Contains(msg, "credential") && !strings.Contains(msg, "401") {
						t.Errorf("GET manifest: error %+v does not say that upstream authentication failed", errs[0])
					}
				}
				if !strings.Contains(out, http.StatusText(resp.Status)) && !strings.Contains(out, "denied") && !strings.Contains(out, "unauthorized") {
					t.Errorf("ctr's error does not show gatehouse's %d:\n%s", resp.Status, out)
				}
			}
		})
	}
}
