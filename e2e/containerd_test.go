package e2e

import (
	"bufio"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// pullTimeout bounds one ctr pull of a few-MB test image.
const pullTimeout = 2 * time.Minute

// Containerd is a private containerd: its own root, state, socket and
// registry hosts directory under one temporary directory, with the CRI
// plugin, runtimes and every snapshotter but native disabled, so it starts
// fast and leaves the host alone.
type Containerd struct {
	// Dir holds everything: config.toml, root/, state/, certs.d/, the socket.
	Dir string
	// Socket is the gRPC socket ctr talks to.
	Socket string
	// HostsDir is passed to ctr as --hosts-dir: HostsDir/<host>/hosts.toml.
	HostsDir string
	// Namespace is the containerd namespace ctr uses.
	Namespace string

	proc *Process
}

// containerdConfig is a version 2 config. The native snapshotter needs only
// bind mounts, which work in any sandbox that lets containerd run at all.
const containerdConfig = `version = 2
root = "%[1]s/root"
state = "%[1]s/state"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.internal.v1.opt",
  "io.containerd.internal.v1.restart",
  "io.containerd.internal.v1.tracing",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.overlayfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.runtime.v1.linux",
  "io.containerd.runtime.v2.task",
  "io.containerd.monitor.v1.cgroups",
  "io.containerd.service.v1.tasks-service",
  "io.containerd.grpc.v1.tasks",
]

[grpc]
  address = "%[1]s/containerd.sock"

[ttrpc]
  address = "%[1]s/containerd.sock.ttrpc"

[debug]
  level = "info"

[plugins."io.containerd.gc.v1.scheduler"]
  startup_delay = "0s"
`

// StartContainerd starts a private containerd and waits for its socket. In
// t.Cleanup it is stopped, every mount under its directory is detached and
// the directory removed.
func StartContainerd(t testing.TB) *Containerd {
	t.Helper()
	requireE2E(t)
	// Not t.TempDir: a unix socket path must stay under 108 bytes, and
	// subtest names make t.TempDir paths long.
	dir, err := os.MkdirTemp("", "e2e-ctrd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unmountUnder(t, dir)
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove containerd dir: %v", err)
		}
	})
	c := &Containerd{
		Dir:       dir,
		Socket:    filepath.Join(dir, "containerd.sock"),
		HostsDir:  filepath.Join(dir, "certs.d"),
		Namespace: "e2e",
	}
	if err := os.MkdirAll(c.HostsDir, 0o755); err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(config, fmt.Appendf(nil, containerdConfig, dir), 0o644); err != nil {
		t.Fatal(err)
	}
	c.proc = StartProcess(t, "containerd", filepath.Join(dir, "containerd.log"), nil, "containerd", "--config", config)
	WaitSocket(t, c.proc, c.Socket, 30*time.Second)
	if res := c.ctr(t, "version"); res.Err != nil {
		t.Fatalf("containerd does not answer: %v", res)
	}
	return c
}

// unmountUnder detaches every mount point below dir (deepest first). The
// native snapshotter only bind-mounts while unpacking, so normally there is
// none; a killed containerd may leave one.
func unmountUnder(t testing.TB, dir string) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Logf("unmount: %v", err)
		return
	}
	defer f.Close()
	var mps []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMountinfo(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			mps = append(mps, mp)
		}
	}
	slices.SortFunc(mps, func(a, b string) int { return len(b) - len(a) })
	for _, mp := range mps {
		if err := syscall.Unmount(mp, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", mp, err)
		}
	}
}

// unescapeMountinfo undoes the octal escapes (\040 for space, ...) of
// /proc/self/mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// ctr runs ctr against this containerd.
func (c *Containerd) ctr(t testing.TB, args ...string) CmdResult {
	t.Helper()
	argv := append([]string{"ctr", "--address", c.Socket, "--namespace", c.Namespace}, args...)
	return runCmd(t.Context(), pullTimeout, nil, argv...)
}

// Hosts describes one registry host's hosts.toml: where containerd sends
// requests for images named with that host.
type Hosts struct {
	// Server is the `server` URL: the last resort, used when every mirror
	// failed (the upstream itself in the usual setup).
	Server string
	// Mirrors are tried first, in order, with capabilities pull and resolve.
	Mirrors []string
	// CA is a PEM file every host entry trusts (`ca`), for an HTTPS server.
	CA string
	// Header is sent with every request to every host entry (`[host.*.header]`),
	// e.g. Authorization for a gatehouse that requires credentials.
	Header map[string]string
}

// SetHosts writes HostsDir/<host>/hosts.toml.
func (c *Containerd) SetHosts(t testing.TB, host string, h Hosts) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "server = %q\n", h.Server)
	mirrors := h.Mirrors
	if len(mirrors) == 0 {
		// containerd 1.6 rejects a hosts.toml without any [host] table
		// ("invalid `host` tree") and then silently dials the image's own
		// host: repeat the server as the one host.
		mirrors = []string{h.Server}
	}
	for _, m := range mirrors {
		fmt.Fprintf(&b, "\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", m)
		if h.CA != "" {
			fmt.Fprintf(&b, "  ca = %q\n", h.CA)
		}
		if len(h.Header) > 0 {
			fmt.Fprintf(&b, "  [host.%q.header]\n", m)
			for _, k := range slices.Sorted(maps.Keys(h.Header)) {
				fmt.Fprintf(&b, "    %s = %q\n", k, h.Header[k])
			}
		}
	}
	dir := filepath.Join(c.HostsDir, host)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// PullOptions select what ctr pulls.
type PullOptions struct {
	Platform     string // e.g. "linux/arm64"; empty: the host's platform
	AllPlatforms bool
	User         string // "user:password" sent by containerd itself
}

// Pull runs `ctr images pull` for ref through the hosts directory, unpacking
// into the native snapshotter. It does not fail the test: callers check
// the result.
func (c *Containerd) Pull(t testing.TB, ref string, opts PullOptions) CmdResult {
	t.Helper()
	args := []string{"images", "pull", "--hosts-dir", c.HostsDir, "--snapshotter", "native"}
	if opts.Platform != "" {
		args = append(args, "--platform", opts.Platform)
	}
	if opts.AllPlatforms {
		args = append(args, "--all-platforms")
	}
	if opts.User != "" {
		args = append(args, "--user", opts.User)
	}
	start := time.Now()
	res := c.ctr(t, append(args, ref)...)
	if strings.Contains(string(res.Stderr), "failed to decode hosts.toml") {
		// ctr then ignores the file and dials the image's host directly.
		t.Fatalf("ctr rejected a hosts.toml under %s:\n%s", c.HostsDir, res.Stderr)
	}
	t.Logf("ctr pull %s (%+v): %v in %v", ref, opts, errString(res.Err), time.Since(start).Round(time.Millisecond))
	return res
}

// MustPull is Pull that fails the test on error.
func (c *Containerd) MustPull(t testing.TB, ref string, opts PullOptions) {
	t.Helper()
	if res := c.Pull(t, ref, opts); res.Err != nil {
		t.Fatalf("ctr pull %s failed: %v\n%s", ref, res.Err, res.Output())
	}
}

// ContentGet returns a blob from containerd's content store.
func (c *Containerd) ContentGet(t testing.TB, dgst string) ([]byte, error) {
	t.Helper()
	res := c.ctr(t, "content", "get", dgst)
	if res.Err != nil {
		return nil, fmt.Errorf("ctr content get %s: %v: %s", dgst, res.Err, strings.TrimSpace(string(res.Stderr)))
	}
	return res.Stdout, nil
}

// ContentDigests lists the digests in containerd's content store.
func (c *Containerd) ContentDigests(t testing.TB) []string {
	t.Helper()
	res := c.ctr(t, "content", "ls", "-q")
	if res.Err != nil {
		t.Fatalf("ctr content ls: %v", res)
	}
	return strings.Fields(string(res.Stdout))
}

// Images lists the image names containerd knows.
func (c *Containerd) Images(t testing.TB) []string {
	t.Helper()
	res := c.ctr(t, "images", "ls", "-q")
	if res.Err != nil {
		t.Fatalf("ctr images ls: %v", res)
	}
	return strings.Fields(string(res.Stdout))
}

// Reset removes every image and every blob, so the next pull must fetch
// everything again, and checks that the content store is empty.
func (c *Containerd) Reset(t testing.TB) {
	t.Helper()
	if imgs := c.Images(t); len(imgs) > 0 {
		if res := c.ctr(t, append([]string{"images", "rm", "--sync"}, imgs...)...); res.Err != nil {
			t.Fatalf("ctr images rm: %v", res)
		}
	}
	// Garbage collection removed what only the images referenced; anything
	// left (content of an interrupted pull) goes explicitly.
	if left := c.ContentDigests(t); len(left) > 0 {
		if res := c.ctr(t, append([]string{"content", "rm"}, left...)...); res.Err != nil {
			t.Fatalf("ctr content rm: %v", res)
		}
	}
	if left := c.ContentDigests(t); len(left) > 0 {
		t.Fatalf("containerd content store not empty after reset: %v", left)
	}
}

// AssertContent checks that containerd's content store holds every object
// of want byte for byte.
func (c *Containerd) AssertContent(t testing.TB, want Objects) {
	t.Helper()
	for _, dgst := range want.Digests() {
		got, err := c.ContentGet(t, dgst)
		if err != nil {
			t.Errorf("%s missing from containerd: %v", want[dgst].Kind, err)
			continue
		}
		if diff := compareObject(dgst, want[dgst], got); diff != "" {
			t.Errorf("containerd content differs from upstream: %s", diff)
		}
	}
}

// AssertNoContent checks that none of the objects is in containerd's
// content store.
func (c *Containerd) AssertNoContent(t testing.TB, objs Objects) {
	t.Helper()
	have := c.ContentDigests(t)
	for _, dgst := range objs.Digests() {
		if slices.Contains(have, dgst) {
			t.Errorf("containerd holds %s %s, which it should not have fetched", objs[dgst].Kind, dgst)
		}
	}
}

func errString(err error) string {
	if err == nil {
		return "ok"
	}
	return err.Error()
}
