package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Skopeo runs skopeo with a private registries.conf and no credentials or
// policy from the host.
type Skopeo struct {
	Dir            string
	RegistriesConf string
}

// SkopeoRegistry is one [[registry]] entry of registries.conf (v2 format).
type SkopeoRegistry struct {
	// Prefix is the image name prefix the entry applies to ("" = Location).
	Prefix string
	// Location is where skopeo goes when every mirror failed.
	Location string
	// Mirrors are [[registry.mirror]] locations, tried first, in order; a
	// location may carry a path prefix ("proxy:5000/docker.io").
	Mirrors []string
}

// NewSkopeo writes a registries.conf with the given registries; every
// registry and mirror is marked insecure (plain HTTP).
func NewSkopeo(t testing.TB, regs ...SkopeoRegistry) *Skopeo {
	t.Helper()
	requireE2E(t)
	s := &Skopeo{Dir: t.TempDir()}
	s.RegistriesConf = filepath.Join(s.Dir, "registries.conf")
	var b strings.Builder
	b.WriteString("unqualified-search-registries = []\n")
	for _, r := range regs {
		b.WriteString("\n[[registry]]\n")
		if r.Prefix != "" {
			fmt.Fprintf(&b, "prefix = %q\n", r.Prefix)
		}
		fmt.Fprintf(&b, "location = %q\ninsecure = true\n", r.Location)
		for _, m := range r.Mirrors {
			fmt.Fprintf(&b, "\n[[registry.mirror]]\nlocation = %q\ninsecure = true\n", m)
		}
	}
	if err := os.WriteFile(s.RegistriesConf, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return s
}

// Run runs `skopeo --registries-conf ... ARGS`.
func (s *Skopeo) Run(t testing.TB, args ...string) CmdResult {
	t.Helper()
	tmp := filepath.Join(s.Dir, "tmp")
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	argv := append([]string{"skopeo", "--insecure-policy", "--registries-conf", s.RegistriesConf, "--tmpdir", tmp}, args...)
	// A private HOME and XDG_RUNTIME_DIR keep the host's auth.json and
	// per-user registries.conf out of the test.
	env := []string{"HOME=" + s.Dir, "XDG_RUNTIME_DIR=" + s.Dir, "XDG_CONFIG_HOME=" + filepath.Join(s.Dir, "config")}
	start := time.Now()
	res := runCmd(t.Context(), pullTimeout, env, argv...)
	t.Logf("skopeo %s: %v in %v", strings.Join(args, " "), errString(res.Err), time.Since(start).Round(time.Millisecond))
	return res
}

// CopyToDir copies src (e.g. docker://host/repo:tag) into a fresh `dir:`
// directory, which keeps manifests and blobs byte for byte, and returns it.
// extra goes before the two image names (e.g. "--all").
func (s *Skopeo) CopyToDir(t testing.TB, src string, extra ...string) (string, CmdResult) {
	t.Helper()
	out, err := os.MkdirTemp(s.Dir, "copy-")
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"copy", "--src-tls-verify=false", "--src-no-creds", "--retry-times", "0", "--preserve-digests"}, extra...)
	return out, s.Run(t, append(args, src, "dir:"+out)...)
}

// AssertDir checks that a `dir:` copy holds every object of want byte for
// byte: blobs as files named by their hex digest, the top-level manifest as
// manifest.json and, with --all, the instances as <hex>.manifest.json.
func AssertDir(t testing.TB, dir string, top string, want Objects) {
	t.Helper()
	for _, dgst := range want.Digests() {
		obj := want[dgst]
		hex := strings.TrimPrefix(dgst, "sha256:")
		var candidates []string
		switch {
		case dgst == top:
			candidates = []string{"manifest.json"}
		case strings.HasPrefix(obj.Kind, "manifest"):
			candidates = []string{hex + ".manifest.json", "manifest.json"}
		default:
			candidates = []string{hex}
		}
		var diff string
		found := false
		for _, c := range candidates {
			got, err := os.ReadFile(filepath.Join(dir, c))
			if err != nil {
				continue
			}
			found = true
			if diff = compareObject(dgst, obj, got); diff == "" {
				break
			}
		}
		switch {
		case !found:
			t.Errorf("skopeo copy lacks %s %s (looked for %v in %s)", obj.Kind, dgst, candidates, dir)
		case diff != "":
			t.Errorf("skopeo copy differs from upstream: %s", diff)
		}
	}
}
