// Command gatehouse is a pull-through caching proxy for OCI and Docker
// registries with a security gate.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	xos "github.com/aquasecurity/trivy/pkg/x/os"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `gatehouse — one caching, gated door between your clusters and the registries.

Usage:
  gatehouse serve [--config FILE] [--listen ADDR] [--data-dir DIR]
        Run the proxy. With no config file it listens on :5000, keeps its
        data in ./gatehouse-data and proxies docker.io, ghcr.io, quay.io,
        registry.k8s.io, gcr.io, mcr.microsoft.com and public.ecr.aws.
  gatehouse check [--config FILE] [--format table|json] [--platform OS/ARCH] IMAGE
        Fetch, scan and judge IMAGE as a pull would; print the verdict and
        the findings. Exit 0 admitted, 1 denied, 2 error.
  gatehouse db update [--force] | db import FILE | db status
        Download the vulnerability DB (gate.db.repository, through the
        matching upstream), load a db.tar.gz offline, or show the loaded DB.
  gatehouse cache ls [--config FILE] [--data-dir DIR]
        List cached blobs and tag mappings.
  gatehouse cache verify [--config FILE] [--data-dir DIR] [--remove]
        Re-hash every cached blob; report (and with --remove delete) bad ones.
  gatehouse cache gc [--config FILE] [--data-dir DIR] [--max-size SIZE]
        Evict least recently used blobs down to cache.maxSize (or SIZE).
  gatehouse config [--config FILE]
        Print the effective configuration (defaults, file and environment).
  gatehouse health [--url URL] [--insecure]
        Exit 0 when a running gatehouse answers its health check (for
        container health checks; default http://127.0.0.1:5000/healthz;
        --insecure skips verifying an https URL's certificate).
  gatehouse version
        Print the version.

Pointing clients at it:
  containerd: /etc/containerd/certs.d/<registry>/hosts.toml with
      server = "https://<registry>"   (or the gatehouse URL itself, see README)
      [host."http://gatehouse.internal:5000"]
        capabilities = ["pull", "resolve"]
  podman/skopeo/CRI-O: registries.conf (gatehouse as the location, not a
  mirror: these clients fall back from a mirror silently)
      [[registry]]
      prefix = "docker.io"
      location = "gatehouse.internal:5000/docker.io"

Environment: GATEHOUSE_LISTEN, GATEHOUSE_DATA_DIR, GATEHOUSE_LOG_FORMAT,
GATEHOUSE_LOG_LEVEL, GATEHOUSE_DEFAULT_UPSTREAM, GATEHOUSE_CACHE_MAX_SIZE
override the file. See README.md for the configuration reference.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	// Trivy makes a temporary directory per process; remove it.
	_ = xos.Cleanup()
	os.Exit(code)
}

// errUsage marks errors that should be followed by the usage text.
var errUsage = errors.New("usage")

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "serve":
		err = cmdServe(ctx, args[1:], stderr)
	case "cache":
		err = cmdCache(ctx, args[1:], stdout)
	case "check":
		err = cmdCheck(ctx, args[1:], stdout, stderr)
	case "db":
		err = cmdDB(ctx, args[1:], stdout, stderr)
	case "config":
		err = cmdConfig(args[1:], stdout)
	case "health":
		err = cmdHealth(ctx, args[1:], stdout)
	case "version", "--version":
		fmt.Fprintln(stdout, "gatehouse", version)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		err = fmt.Errorf("%w: unknown command %q", errUsage, args[0])
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errDenied):
		return checkDenied
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "gatehouse: %v\n\n%s", err, usage)
		return checkError
	default:
		fmt.Fprintf(stderr, "gatehouse: %v\n", err)
		if len(args) > 0 && args[0] == "check" {
			return checkError
		}
		return 1
	}
}

func cmdHealth(ctx context.Context, args []string, stdout io.Writer) error {
	url := "http://127.0.0.1:5000/healthz"
	var insecure bool
	if err := newFlagSet("health", args, func(fs *flag.FlagSet) {
		fs.StringVar(&url, "url", url, "health check `URL`")
		fs.BoolVar(&insecure, "insecure", false, "do not verify the server certificate of an https URL (it seldom names 127.0.0.1)")
	}); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	client := http.DefaultClient
	if insecure {
		client = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // opt-in, a local liveness probe
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	fmt.Fprintln(stdout, "ok")
	return nil
}
