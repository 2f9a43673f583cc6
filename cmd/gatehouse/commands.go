package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/gatehouse/gatehouse/config"
)

// commonFlags are the flags every command that reads the configuration has.
type commonFlags struct {
	config  string
	dataDir string
}

func (c *commonFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.config, "config", "", "YAML configuration `FILE` (default: $GATEHOUSE_CONFIG, else the embedded defaults)")
	fs.StringVar(&c.dataDir, "data-dir", "", "data `DIR` (overrides dataDir and $GATEHOUSE_DATA_DIR)")
}

// load reads the configuration: --config, else $GATEHOUSE_CONFIG, else the
// embedded defaults; environment overrides; then --data-dir.
func (c *commonFlags) load() (*config.Config, error) {
	path := c.config
	if path == "" {
		path = os.Getenv("GATEHOUSE_CONFIG")
	}
	cfg, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	if c.dataDir != "" {
		cfg.DataDir = c.dataDir
	}
	return cfg, nil
}

// commands is gatehouse's command tree.
func commands() *command {
	root := &command{
		summary: "gatehouse — one caching, gated door between your clusters and the registries.",
		long:    rootHelp(),
		example: "gatehouse serve                                  # embedded defaults, :5000, ./gatehouse-data\n" +
			"gatehouse db update                              # load the vulnerability DB\n" +
			"gatehouse check docker.io/library/alpine:3.22    # judge an image as a pull would",
		subs: []*command{serveCmd(), checkCmd(), warmCmd(), dbCmd(), cacheCmd(), configCmd(), policyCmd(), healthCmd(), versionCmd()},
	}
	return root
}

func rootHelp() string {
	var b strings.Builder
	b.WriteString(`Pull through it (containerd hosts.toml, registries.conf: see docs/clients.md);
it caches blobs, scans and verifies every new image, and answers 403 DENIED
with the reasons when an image breaks the policy.

Environment (a flag wins over its variable; a variable over the file):
`)
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "  %s\t%s\n", "GATEHOUSE_CONFIG", "configuration file (as --config)")
	for _, e := range config.Environment() {
		fmt.Fprintf(tw, "  %s\t%s\n", e.Name, e.Help)
	}
	fmt.Fprintf(tw, "  %s\t%s\n", "GATEHOUSE_PASSWORD", "password for check --server --username")
	tw.Flush()
	b.WriteString("\nDocumentation: README.md and docs/ in the source, or https://github.com/gatehouse/gatehouse.")
	return b.String()
}

func versionCmd() *command {
	return &command{name: "version", summary: "Print the version", example: "gatehouse version",
		run: func(_ context.Context, out *output, _ []string) error {
			fmt.Fprintln(out.stdout, "gatehouse", version)
			return nil
		}}
}

func serveCmd() *command {
	var cf commonFlags
	var listen string
	return &command{name: "serve", summary: "Run the proxy",
		long: `With no configuration it listens on :5000, keeps its data in ./gatehouse-data
and proxies docker.io, ghcr.io, quay.io, registry.k8s.io, gcr.io,
mcr.microsoft.com and public.ecr.aws, denying images with a fixable
CRITICAL vulnerability. It downloads the vulnerability DB at start and every
gate.db.updateInterval through the matching upstream; until one is loaded,
images under a rule that scans are refused with 503 (air-gapped: load one
with gatehouse db import).`,
		example: "gatehouse serve\ngatehouse serve --config /etc/gatehouse/gatehouse.yaml\nGATEHOUSE_LISTEN=:5443 gatehouse serve --data-dir /var/lib/gatehouse",
		flags: func(fs *flag.FlagSet) {
			cf.register(fs)
			fs.StringVar(&listen, "listen", "", "listen `ADDR`, e.g. :5000 (overrides listen and $GATEHOUSE_LISTEN)")
		},
		run: func(ctx context.Context, out *output, _ []string) error { return serve(ctx, &cf, listen, out.stderr) }}
}

func checkCmd() *command {
	var o checkOptions
	return &command{name: "check", args: "IMAGE", nargs: 1, summary: "Judge an image as a pull would, and print the verdict",
		long: `Fetches IMAGE's manifest through the configured upstream, scans and
verifies it under the configuration's policy (in a scratch state, beside a
serving gatehouse; the vulnerability DB comes from the data directory), and
prints the verdict and the findings. With --server it asks a running
gatehouse instead: the manifest is pulled through its registry API, so its
own policy and DB judge, and the findings come from its JSON API.

Exit status: 0 admitted, 1 denied, 2 error.`,
		example: "gatehouse check docker.io/library/alpine:3.22\n" +
			"gatehouse check --format json ghcr.io/org/app@sha256:...\n" +
			"gatehouse check --server https://gatehouse.internal:5000 nginx:1.29",
		flags: o.register,
		run: func(ctx context.Context, out *output, args []string) error {
			o.image = args[0]
			return check(ctx, &o, out)
		}}
}

func dbCmd() *command {
	var cf commonFlags
	var force bool
	return &command{name: "db", summary: "Load and show the vulnerability DB",
		subs: []*command{
			{name: "db update", nargs: 0, summary: "Download the vulnerability DB through the matching upstream",
				long:    "Fetches gate.db.repository (default ghcr.io/aquasecurity/trivy-db:2) through the\nupstream that serves it, verifies and installs it.",
				example: "gatehouse db update\ngatehouse db update --config /etc/gatehouse/gatehouse.yaml --force",
				flags: func(fs *flag.FlagSet) {
					cf.register(fs)
					fs.BoolVar(&force, "force", false, "download even when the artifact is the one last imported")
				},
				run: func(ctx context.Context, out *output, _ []string) error { return dbUpdate(ctx, &cf, force, out) }},
			{name: "db import", args: "FILE", nargs: 1, summary: "Load a db.tar.gz offline (air-gapped)",
				long:    "FILE is a Trivy DB archive (db.tar.gz, as `oras pull ghcr.io/aquasecurity/trivy-db:2`\nsaves it). It is validated before it replaces the loaded DB.",
				example: "gatehouse db import db.tar.gz",
				flags:   cf.register,
				run:     func(ctx context.Context, out *output, args []string) error { return dbImport(ctx, &cf, args[0], out) }},
			{name: "db status", nargs: 0, summary: "Show the loaded vulnerability DB",
				example: "gatehouse db status --data-dir /var/lib/gatehouse",
				flags:   cf.register,
				run:     func(ctx context.Context, out *output, _ []string) error { return dbStatus(ctx, &cf, out) }},
		}}
}

func cacheCmd() *command {
	var cf commonFlags
	var remove bool
	var maxSize string
	c := func(name, summary, example string, more func(*flag.FlagSet), run func(context.Context, *cacheCLI) error) *command {
		return &command{name: "cache " + name, nargs: 0, summary: summary, example: example,
			long: "Works on the data directory of the configuration (or --data-dir), which must exist;\nwith shared storage, on the shared bucket and database.",
			flags: func(fs *flag.FlagSet) {
				cf.register(fs)
				if more != nil {
					more(fs)
				}
			},
			run: func(ctx context.Context, out *output, _ []string) error {
				cc, err := openCacheCLI(ctx, &cf)
				if err != nil {
					return err
				}
				defer cc.store.Close()
				cc.stdout = out.stdout
				return run(ctx, cc)
			}}
	}
	return &command{name: "cache", summary: "List, verify and trim the blob cache",
		subs: []*command{
			c("ls", "List cached blobs and tag mappings", "gatehouse cache ls --data-dir /var/lib/gatehouse", nil, func(ctx context.Context, cc *cacheCLI) error { return cc.ls(ctx) }),
			c("verify", "Re-hash every cached blob; report (and with --remove delete) bad ones", "gatehouse cache verify --remove",
				func(fs *flag.FlagSet) {
					fs.BoolVar(&remove, "remove", false, "delete blobs whose content does not match their digest")
				}, func(ctx context.Context, cc *cacheCLI) error { return cc.verify(ctx, remove) }),
			c("gc", "Evict least recently used blobs down to cache.maxSize (or --max-size)", "gatehouse cache gc --max-size 20GiB",
				func(fs *flag.FlagSet) {
					fs.StringVar(&maxSize, "max-size", "", "evict down to this `SIZE` (e.g. 20GiB) instead of cache.maxSize")
				}, func(ctx context.Context, cc *cacheCLI) error { return cc.gc(ctx, maxSize) }),
		}}
}

func configCmd() *command {
	var cf commonFlags
	return &command{name: "config", nargs: 0, summary: "Print the effective configuration",
		long:    "The embedded defaults, the file and the environment merged, validated, with\nsizes in units and the rule that judges repositories no written rule matches.",
		example: "gatehouse config\ngatehouse config --config gatehouse.yaml",
		flags:   cf.register,
		run:     func(_ context.Context, out *output, _ []string) error { return printConfig(&cf, out.stdout) }}
}

func healthCmd() *command {
	var cf commonFlags
	var url string
	var insecure bool
	return &command{name: "health", nargs: 0, summary: "Exit 0 when a running gatehouse answers its health check",
		long: `For container health checks. Without --url it asks the gatehouse of the
configuration (--config, $GATEHOUSE_CONFIG, $GATEHOUSE_LISTEN) on its own
listen port at 127.0.0.1, over https when server.tls is set (the local
certificate is not verified: it seldom names 127.0.0.1).`,
		example: "gatehouse health\ngatehouse health --url https://gatehouse.internal:5000/healthz",
		flags: func(fs *flag.FlagSet) {
			cf.register(fs)
			fs.StringVar(&url, "url", "", "health check `URL` (default: from the configuration's listen and tls)")
			fs.BoolVar(&insecure, "insecure", false, "do not verify the certificate of an https --url")
		},
		run: func(ctx context.Context, out *output, _ []string) error {
			return health(ctx, &cf, url, insecure, out.stdout)
		}}
}
