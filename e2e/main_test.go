package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// tools are the programs the tests run; scripts/deps.sh installs them.
var tools = map[string]string{
	"docker-registry": "docker-registry",
	"containerd":      "containerd",
	"ctr":             "containerd",
	"skopeo":          "skopeo",
	"htpasswd":        "apache2-utils",
}

// env is what TestMain found: the gatehouse binary, or why there is none.
var env struct {
	gatehouseBin string
	buildErr     error
	problems     []string // missing tools, not root
}

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run()) // every test skips itself
	}
	for tool, pkg := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			env.problems = append(env.problems, fmt.Sprintf("%s not found (Debian package %s; run scripts/deps.sh as root)", tool, pkg))
		}
	}
	if os.Geteuid() != 0 {
		env.problems = append(env.problems, "not running as root (containerd needs it)")
	}

	tmp, err := os.MkdirTemp("", "gatehouse-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	env.gatehouseBin, env.buildErr = buildGatehouse(tmp)
	code := m.Run()
	os.RemoveAll(tmp)
	os.Exit(code)
}

// buildGatehouse builds ./cmd/gatehouse into dir, unless GATEHOUSE_BIN names
// a prebuilt binary. The build runs before m.Run, so it does not count
// against the test timeout (a cold build embedding Trivy takes minutes).
func buildGatehouse(dir string) (string, error) {
	if bin := os.Getenv("GATEHOUSE_BIN"); bin != "" {
		abs, err := filepath.Abs(bin)
		if err != nil {
			return "", err
		}
		if _, err := os.Stat(abs); err != nil {
			return "", fmt.Errorf("GATEHOUSE_BIN: %w", err)
		}
		return abs, nil
	}
	bin := filepath.Join(dir, "gatehouse")
	start := time.Now()
	// -trimpath, as make build, the Dockerfile and deploy's test build: they
	// then share one compile of the dependency tree in the build cache.
	env, args := []string{"GOEXPERIMENT=jsonv2", "CGO_ENABLED=0"}, []string{"go", "build", "-trimpath", "-o", bin}
	if os.Getenv("GATEHOUSE_E2E_RACE") == "1" {
		// A race in the running binary is reported in its log, which
		// Gatehouse.scanLog turns into a test failure.
		env, args = []string{"GOEXPERIMENT=jsonv2", "CGO_ENABLED=1"}, append(args, "-race")
	}
	res := runCmd(context.Background(), 30*time.Minute, env, append(args, "../cmd/gatehouse")...)
	if res.Err != nil {
		return "", fmt.Errorf("go build ./cmd/gatehouse: %v\n%s", res.Err, strings.TrimSpace(res.Output()))
	}
	fmt.Fprintf(os.Stderr, "e2e: built gatehouse in %v\n", time.Since(start).Round(time.Second))
	return bin, nil
}

// requireE2E skips under -short and fails when the machine lacks what the
// end-to-end tests need.
func requireE2E(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test: skipped with -short")
	}
	if len(env.problems) > 0 {
		t.Fatalf("end-to-end environment incomplete:\n  %s", strings.Join(env.problems, "\n  "))
	}
}

// requireGatehouse is requireE2E plus a built gatehouse binary.
func requireGatehouse(t testing.TB) string {
	t.Helper()
	requireE2E(t)
	if env.buildErr != nil {
		t.Fatalf("no gatehouse binary: %v", env.buildErr)
	}
	return env.gatehouseBin
}
