//go:build linux

package deploy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	ctdconfig "github.com/containerd/containerd/v2/core/remotes/docker/config"
	corev1 "k8s.io/api/core/v1"

	"github.com/gatehouse/gatehouse/access/accesstest"
)

// scriptTimeout bounds one run of the DaemonSet's script on a loaded machine.
const scriptTimeout = time.Minute

// nodeShells are the shells the script runs under: busybox's, as in the
// DaemonSet's image, and the system's /bin/sh (dash on Debian).
func nodeShells(t *testing.T) map[string][]string {
	t.Helper()
	shells := map[string][]string{"sh": {"/bin/sh"}}
	if bb, err := exec.LookPath("busybox"); err == nil {
		shells["busybox"] = []string{bb, "sh"}
	} else if !testing.Short() {
		t.Fatal("busybox is not installed (the node-hosts image's shell): run scripts/deps.sh")
	}
	return shells
}

// fakeNode lays out what the kubelet would give the DaemonSet's container
// (the ConfigMap and Secret volumes, with their items) under a temporary
// directory, hostPath volumes as they are, and returns the container's
// script with its paths pointing there.
type fakeNode struct {
	script string
	mounts map[string]string // container mountPath -> directory here
}

// assignment is a line of the script's head naming a mounted path.
var assignment = regexp.MustCompile(`(?m)^([a-z_]+)=(/\S*)$`)

func newFakeNode(t *testing.T, nh nodeHosts, secrets map[string]map[string]string) *fakeNode {
	t.Helper()
	root := t.TempDir()
	pod := nh.ds.Spec.Template.Spec
	c := pod.Containers[0]
	n := &fakeNode{mounts: map[string]string{}}
	write := func(dir string, data map[string]string, items []corev1.KeyToPath, mode *int32) {
		t.Helper()
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if len(items) == 0 {
			for k := range data {
				items = append(items, corev1.KeyToPath{Key: k, Path: k})
			}
		}
		for _, it := range items {
			v, ok := data[it.Key]
			if !ok {
				t.Fatalf("volume item %s: no such key (the kubelet would not start the pod)", it.Key)
			}
			perm := os.FileMode(0o644)
			if mode != nil {
				perm = os.FileMode(*mode)
			}
			if err := os.WriteFile(filepath.Join(dir, it.Path), []byte(v), perm); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, vm := range c.VolumeMounts {
		v := nh.volume(vm.Name)
		if v == nil {
			t.Fatalf("volumeMount %s names no volume", vm.Name)
		}
		dir := filepath.Join(root, vm.MountPath)
		switch {
		case v.HostPath != nil:
			dir = v.HostPath.Path
		case v.ConfigMap != nil && strings.HasSuffix(v.ConfigMap.Name, "-node-hosts"):
			write(dir, nh.files, v.ConfigMap.Items, nil)
		case v.Secret != nil:
			data, ok := secrets[v.Secret.SecretName]
			if !ok {
				t.Fatalf("volume %s: Secret %s not given to the test", v.Name, v.Secret.SecretName)
			}
			write(dir, data, v.Secret.Items, v.Secret.DefaultMode)
		default:
			t.Fatalf("volume %s: not simulated", v.Name)
		}
		n.mounts[vm.MountPath] = dir
	}
	if len(c.Command) != 3 || c.Command[0] != "/bin/sh" || c.Command[1] != "-c" {
		t.Fatalf("command %q, want /bin/sh -c SCRIPT", c.Command)
	}
	used := map[string]bool{}
	n.script = assignment.ReplaceAllStringFunc(c.Command[2], func(line string) string {
		m := assignment.FindStringSubmatch(line)
		for mp, dir := range n.mounts {
			if m[2] == mp || strings.HasPrefix(m[2], mp+"/") {
				used[mp] = true
				return m[1] + "=" + dir + strings.TrimPrefix(m[2], mp)
			}
		}
		t.Fatalf("script line %q names a path that is not mounted", line)
		return ""
	})
	for mp := range n.mounts {
		if !used[mp] {
			t.Errorf("mount %s is not used by the script", mp)
		}
	}
	return n
}

// scriptRun is one running script.
type scriptRun struct {
	cmd    *exec.Cmd
	lines  chan string
	mu     sync.Mutex
	stderr bytes.Buffer
	done   chan error
}

func (r *scriptRun) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stderr.Write(p)
}

func (r *scriptRun) errText() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stderr.String()
}

// start runs the script in its own process group, killed at cleanup.
func (n *fakeNode) start(t *testing.T, shell []string) *scriptRun {
	t.Helper()
	r := &scriptRun{lines: make(chan string, 16), done: make(chan error, 1)}
	r.cmd = exec.Command(shell[0], append(shell[1:], "-c", n.script)...)
	r.cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "RESYNC_SECONDS=1"}
	r.cmd.Stderr = r
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := r.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			r.lines <- sc.Text()
		}
		r.done <- r.cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = syscall.Kill(-r.cmd.Process.Pid, syscall.SIGKILL)
		<-r.done
	})
	return r
}

// written waits for the script's first pass.
func (r *scriptRun) written(t *testing.T) {
	t.Helper()
	select {
	case l := <-r.lines:
		if l != "hosts.toml written" {
			t.Fatalf("script says %q, want \"hosts.toml written\"", l)
		}
	case err := <-r.done:
		t.Fatalf("script ended (%v) before writing: %s", err, r.errText())
	case <-time.After(scriptTimeout):
		t.Fatal("script wrote nothing within a minute")
	}
}

// failed waits for the script to exit and returns its exit error and stderr.
func (r *scriptRun) failed(t *testing.T) (error, string) {
	t.Helper()
	select {
	case l := <-r.lines:
		t.Fatalf("script says %q, want it to refuse", l)
	case err := <-r.done:
		r.done <- err // for the cleanup
		return err, r.errText()
	case <-time.After(scriptTimeout):
		t.Fatal("script neither wrote nor failed within a minute")
	}
	return nil, ""
}

// tokenServer is an HTTPS endpoint with a certificate of ca that answers
// 200 to the current bearer token and 401 to anything else.
type tokenServer struct {
	*httptest.Server
	mu    sync.Mutex
	token string
}

func newTokenServer(t *testing.T, ca *accesstest.CA, token string) *tokenServer {
	t.Helper()
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	ca.Issue(t, certFile, keyFile, 2, "127.0.0.1")
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	s := &tokenServer{token: token}
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		ok := r.Header.Get("Authorization") == "Bearer "+s.token
		s.mu.Unlock()
		if !ok {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	s.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	s.StartTLS()
	t.Cleanup(s.Close)
	return s
}

func (s *tokenServer) setToken(tok string) {
	s.mu.Lock()
	s.token = tok
	s.mu.Unlock()
}

// containerdReaches loads certsDir with containerd's own hosts.toml loader
// (what the CRI plugin does per pull) for an image of registry, and asks
// every host it yields for /v2/ with the TLS settings and headers it built.
// All must answer 200: each one trusts the CA and sends the credential.
func containerdReaches(t *testing.T, certsDir, registry, wantHost string) {
	t.Helper()
	hosts, err := ctdconfig.ConfigureHosts(t.Context(), ctdconfig.HostOptions{HostDir: ctdconfig.HostDirFromRoot(certsDir)})(registry)
	if err != nil {
		t.Fatalf("containerd's loader refuses %s: %v", certsDir, err)
	}
	if len(hosts) != 2 {
		t.Fatalf("containerd made %d hosts for %s, want the [host] entry and server", len(hosts), registry)
	}
	for i, h := range hosts {
		if h.Scheme != "https" || h.Host != wantHost {
			t.Errorf("%s host %d = %s://%s, want https://%s", registry, i, h.Scheme, h.Host, wantHost)
			continue
		}
		ctx, cancel := context.WithTimeout(t.Context(), scriptTimeout)
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.Scheme+"://"+h.Host+h.Path+"/", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header = h.Header.Clone()
		resp, err := h.Client.Do(req)
		cancel()
		if err != nil {
			t.Errorf("%s host %d (%s): %v", registry, i, h.Host, err)
			continue
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s host %d: %s, want 200 (the credential was not sent)", registry, i, resp.Status)
		}
	}
}

// The script writes, for every registry, the CA (0644) and a hosts.toml
// (0600) that containerd's loader reads: both `server` and the [host]
// entry trust the CA and send the token (escaped for TOML), and a rotated
// token reaches the file at the next resync.
func TestNodeHostsScriptWrites(t *testing.T) {
	for name, shell := range nodeShells(t) {
		t.Run(name, func(t *testing.T) {
			ca, caPEM := newCA(t)
			// A token with the two characters TOML strings must escape.
			token := `pull-"token"\0123456789`
			srv := newTokenServer(t, ca, token)
			certsDir := filepath.Join(t.TempDir(), "certs.d")
			nh := renderNodeHosts(t, tlsAuthValues(map[string]any{"endpoint": srv.URL, "certsDir": certsDir, "resyncSeconds": 1}))
			node := newFakeNode(t, nh, map[string]map[string]string{
				"gatehouse-tls": {"ca.crt": string(caPEM), "tls.crt": "server certificate", "tls.key": "TLS-PRIVATE-KEY"},
				"node-pull":     {"token": token + "\n"},
			})
			node.start(t, shell).written(t)

			for _, reg := range []string{"_default", "docker.io"} {
				dir := filepath.Join(certsDir, reg)
				checkMode(t, filepath.Join(dir, "hosts.toml"), 0o600)
				checkMode(t, filepath.Join(dir, "gatehouse-ca.crt"), 0o644)
				if got, _ := os.ReadFile(filepath.Join(dir, "gatehouse-ca.crt")); !bytes.Equal(got, caPEM) {
					t.Errorf("%s/gatehouse-ca.crt = %q, want the CA", reg, got)
				}
				data, err := os.ReadFile(filepath.Join(dir, "hosts.toml"))
				if err != nil {
					t.Fatal(err)
				}
				h := checkHostsTOML(t, reg+"/hosts.toml", data, srv.URL)
				want := "Bearer " + token
				if h.Header["Authorization"] != want || h.Host[srv.URL].Header["Authorization"] != want {
					t.Errorf("%s: Authorization %q (server), %q (host), want %q:\n%s", reg, h.Header["Authorization"], h.Host[srv.URL].Header["Authorization"], want, data)
				}
				if strings.Contains(string(data), authMarker) {
					t.Errorf("%s: marker left in\n%s", reg, data)
				}
				// The script keeps resyncing: its own .*.tmp files may be
				// there for a moment.
				var names []string
				entries, _ := os.ReadDir(dir)
				for _, e := range entries {
					if !strings.HasPrefix(e.Name(), ".") {
						names = append(names, e.Name())
					}
				}
				if strings.Join(names, " ") != "gatehouse-ca.crt hosts.toml" {
					t.Errorf("%s holds %v, want only gatehouse-ca.crt and hosts.toml", reg, names)
				}
			}
			if strings.Contains(snapshot(t, certsDir), "TLS-PRIVATE-KEY") {
				t.Error("the TLS Secret's private key reached the node")
			}
			u := strings.TrimPrefix(srv.URL, "https://")
			containerdReaches(t, certsDir, "docker.io", u)
			containerdReaches(t, certsDir, "ghcr.io", u) // through _default

			// Rotation: the kubelet updates the mounted Secret; the next
			// resync writes the new token.
			rotated := "rotated-token-9876543210"
			tokFile := filepath.Join(node.mounts["/gatehouse/auth"], "token")
			if err := os.WriteFile(tokFile+".new", []byte(rotated), 0o400); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tokFile+".new", tokFile); err != nil {
				t.Fatal(err)
			}
			srv.setToken(rotated)
			hostsFile := filepath.Join(certsDir, "docker.io", "hosts.toml")
			deadline := time.Now().Add(scriptTimeout)
			for {
				data, _ := os.ReadFile(hostsFile)
				if strings.Count(string(data), `"Bearer `+rotated+`"`) == 2 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("the rotated token did not reach hosts.toml within a minute:\n%s", data)
				}
				time.Sleep(100 * time.Millisecond) // polling the file the script rewrites
			}
			containerdReaches(t, certsDir, "docker.io", u)
		})
	}
}

// A registry with a port gets its own directory, host:port, although its
// ConfigMap key cannot hold the colon.
func TestNodeHostsScriptRegistryWithPort(t *testing.T) {
	for name, shell := range nodeShells(t) {
		t.Run(name, func(t *testing.T) {
			_, caPEM := newCA(t)
			certsDir := filepath.Join(t.TempDir(), "certs.d")
			const endpoint = "https://gatehouse.internal:5000"
			nh := renderNodeHosts(t, tlsAuthValues(map[string]any{"endpoint": endpoint, "certsDir": certsDir,
				"registries": []any{"_default", "registry.internal:5000", "docker.io"}}))
			if _, ok := nh.files["registry.internal_5000.hosts.toml"]; !ok {
				t.Fatalf("ConfigMap keys %v, want registry.internal_5000.hosts.toml", slices.Sorted(maps.Keys(nh.files)))
			}
			newFakeNode(t, nh, map[string]map[string]string{
				"gatehouse-tls": {"ca.crt": string(caPEM)},
				"node-pull":     {"token": "pull-token"},
			}).start(t, shell).written(t)
			for _, reg := range []string{"_default", "registry.internal:5000", "docker.io"} {
				data, err := os.ReadFile(filepath.Join(certsDir, reg, "hosts.toml"))
				if err != nil {
					t.Fatalf("%s: %v", reg, err)
				}
				h := checkHostsTOML(t, reg+"/hosts.toml", data, endpoint)
				if want := filepath.Join(certsDir, reg, "gatehouse-ca.crt"); fmt.Sprint(h.CA) != want {
					t.Errorf("%s: ca = %q, want %q", reg, h.CA, want)
				}
				if _, err := os.Stat(filepath.Join(certsDir, reg, "gatehouse-ca.crt")); err != nil {
					t.Errorf("%s: %v", reg, err)
				}
			}
			if _, err := os.Stat(filepath.Join(certsDir, "registry.internal_5000")); err == nil {
				t.Error("the script wrote registry.internal_5000/, which containerd never reads")
			}
		})
	}
}

// With headerKey the Secret's value is the whole header: here basic auth
// for an htpasswd user, as containerd then sends it.
func TestNodeHostsScriptHeaderKey(t *testing.T) {
	const basic = "Basic bm9kZS1wb29sLWE6cGFzc3dvcmQ=" // node-pool-a:password
	for name, shell := range nodeShells(t) {
		t.Run(name, func(t *testing.T) {
			_, caPEM := newCA(t)
			certsDir := filepath.Join(t.TempDir(), "certs.d")
			const endpoint = "https://127.0.0.1:5000"
			nh := renderNodeHosts(t, tlsAuthValues(map[string]any{
				"endpoint": endpoint, "certsDir": certsDir,
				"auth": map[string]any{"secretName": "node-pull", "headerKey": "authorization"},
			}))
			node := newFakeNode(t, nh, map[string]map[string]string{
				"gatehouse-tls": {"ca.crt": string(caPEM)},
				"node-pull":     {"authorization": basic + "\n"},
			})
			node.start(t, shell).written(t)
			data, err := os.ReadFile(filepath.Join(certsDir, "docker.io", "hosts.toml"))
			if err != nil {
				t.Fatal(err)
			}
			h := checkHostsTOML(t, "docker.io/hosts.toml", data, endpoint)
			if h.Header["Authorization"] != basic || h.Host[endpoint].Header["Authorization"] != basic {
				t.Errorf("Authorization %q / %q, want %q", h.Header["Authorization"], h.Host[endpoint].Header["Authorization"], basic)
			}
		})
	}
}

// newCA makes a throw-away CA and returns it with its PEM certificate.
func newCA(t *testing.T) (*accesstest.CA, []byte) {
	t.Helper()
	ca := accesstest.NewCA(t)
	pem, err := os.ReadFile(ca.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	return ca, pem
}

func checkMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Error(err)
		return
	}
	if got := fi.Mode().Perm(); got != want {
		t.Errorf("%s: mode %o, want %o", path, got, want)
	}
}

// Bad input stops the script with a message and leaves the files on the
// node as the last good pass wrote them.
func TestNodeHostsScriptRefuses(t *testing.T) {
	for _, tc := range []struct {
		name  string
		spoil func(t *testing.T, caDir, authDir string)
		want  string
	}{
		{"token with a line break", func(t *testing.T, _, authDir string) {
			replaceFile(t, filepath.Join(authDir, "token"), "first-line-0123\nsecond-line")
		}, "holds a line break or another control character"},
		{"token with a control character", func(t *testing.T, _, authDir string) {
			replaceFile(t, filepath.Join(authDir, "token"), "token-\x1b[31m-0123456789")
		}, "holds a line break or another control character"},
		{"header value without a scheme", func(t *testing.T, _, authDir string) {
			removeFile(t, filepath.Join(authDir, "token"))
			replaceFile(t, filepath.Join(authDir, "authorization"), "just-a-token-0123456789")
		}, `must be "Bearer <token>" or "Basic <base64 user:password>"`},
		{"empty token", func(t *testing.T, _, authDir string) {
			replaceFile(t, filepath.Join(authDir, "token"), "\n")
		}, `must be "Bearer <token>"`},
		{"no credential", func(t *testing.T, _, authDir string) {
			removeFile(t, filepath.Join(authDir, "token"))
		}, "needs an Authorization header, but"},
		{"CA missing", func(t *testing.T, caDir, _ string) {
			removeFile(t, filepath.Join(caDir, "ca.crt"))
		}, "is missing or holds no PEM certificate"},
		{"CA not PEM", func(t *testing.T, caDir, _ string) {
			replaceFile(t, filepath.Join(caDir, "ca.crt"), "not a certificate")
		}, "is missing or holds no PEM certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for name, shell := range nodeShells(t) {
				t.Run(name, func(t *testing.T) {
					_, caPEM := newCA(t)
					certsDir := filepath.Join(t.TempDir(), "certs.d")
					nh := renderNodeHosts(t, tlsAuthValues(map[string]any{"endpoint": "https://127.0.0.1:5000", "certsDir": certsDir}))
					node := newFakeNode(t, nh, map[string]map[string]string{
						"gatehouse-tls": {"ca.crt": string(caPEM)},
						"node-pull":     {"token": "good-token-0123456789"},
					})
					first := node.start(t, shell)
					first.written(t)
					_ = syscall.Kill(-first.cmd.Process.Pid, syscall.SIGKILL)
					before := snapshot(t, certsDir)

					tc.spoil(t, node.mounts["/gatehouse/ca"], node.mounts["/gatehouse/auth"])
					err, stderr := node.start(t, shell).failed(t)
					var exit *exec.ExitError
					if !errors.As(err, &exit) || exit.ExitCode() == 0 {
						t.Fatalf("script ended with %v, want a non-zero exit", err)
					}
					if !strings.Contains(stderr, tc.want) {
						t.Errorf("stderr %q, want %q", stderr, tc.want)
					}
					if after := snapshot(t, certsDir); after != before {
						t.Errorf("files changed by a refused pass:\nbefore %s\nafter  %s", before, after)
					}
				})
			}
		})
	}
}

func replaceFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func removeFile(t *testing.T, path string) {
	t.Helper()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
}

// snapshot lists every file under dir with its mode and content. A file
// that vanishes while it is read (a running script's temporary file) is
// left out.
func snapshot(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		data, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s %o %q\n", strings.TrimPrefix(path, dir), fi.Mode().Perm(), data)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}
