package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/gate"
)

// Exit statuses of `gatehouse check`.
const (
	checkAdmitted = 0
	checkDenied   = 1
	checkError    = 2
)

// errDenied makes run exit with checkDenied.
var errDenied = errors.New("denied")

// checkResult is the --format json output.
type checkResult struct {
	Image    string         `json:"image"`
	Digest   string         `json:"digest"`
	Platform string         `json:"platform,omitempty"`
	Verdict  *gate.Verdict  `json:"verdict"`
	Vulns    []gate.Vuln    `json:"vulnerabilities"`
	Counts   map[string]int `json:"counts"`
}

func cmdCheck(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cf commonFlags
	var format, platform string
	var fs *flag.FlagSet
	if err := newFlagSetArgs("check", args, func(f *flag.FlagSet) {
		fs = f
		cf.register(f)
		f.StringVar(&format, "format", "table", "output `format`: table or json")
		f.StringVar(&platform, "platform", "linux/amd64", "platform to judge when IMAGE is a multi-platform index")
	}); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("%w: check needs one IMAGE, e.g. docker.io/library/alpine:3.22", errUsage)
	}
	if format != "table" && format != "json" {
		return fmt.Errorf("%w: --format must be table or json", errUsage)
	}
	wantPlatform, err := v1.ParsePlatform(platform)
	if err != nil {
		return fmt.Errorf("%w: --platform: %v", errUsage, err)
	}
	cfg, err := cf.load()
	if err != nil {
		return err
	}
	up, repo, ref, err := parseImage(cfg, fs.Arg(0))
	if err != nil {
		return err
	}
	log := newLogger(cfg, stderr)
	slog.SetDefault(log)
	// check judges in a scratch state directory, so it can run next to a
	// serving gatehouse; the vulnerability DB comes from the data directory.
	state, err := os.MkdirTemp("", "gatehouse-check-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(state)
	cfg.Gate.MaxWait = config.Duration(time.Hour)
	// Scratch means local stores even where the replicas share S3 and
	// PostgreSQL: a check records nothing in the cluster.
	cfg.Storage = config.Storage{Blobs: config.BlobStorage{Type: config.StorageLocal}, Metadata: config.MetadataStorage{Type: config.StorageBbolt}}
	st, err := newStack(cfg, state, false, log)
	if err != nil {
		return err
	}
	defer st.Close()

	m, err := st.content.Manifest(ctx, up, repo, ref)
	if err != nil {
		return err
	}
	res := checkResult{Image: fs.Arg(0), Digest: m.Digest.String()}
	if m.MediaType.IsIndex() {
		idx, err := v1.ParseIndexManifest(strings.NewReader(string(m.Data)))
		if err != nil {
			return fmt.Errorf("index %s: %w", m.Digest, err)
		}
		var found *v1.Descriptor
		for i, d := range idx.Manifests {
			if d.Platform != nil && d.Platform.Satisfies(*wantPlatform) {
				found = &idx.Manifests[i]
				break
			}
		}
		if found == nil {
			return fmt.Errorf("index %s has no manifest for %s", m.Digest, platform)
		}
		res.Platform = found.Platform.String()
		if m, err = st.content.Manifest(ctx, up, repo, found.Digest.String()); err != nil {
			return err
		}
	}
	tag := ""
	if !strings.Contains(ref, ":") {
		tag = ref
	}
	v, err := st.gate.Check(ctx, gate.Subject{Upstream: up, Repo: repo, Tag: tag, Digest: m.Digest, MediaType: m.MediaType, Manifest: m.Data, Client: "gatehouse check"})
	if err != nil {
		return err
	}
	res.Verdict = v
	res.Vulns = []gate.Vuln{}
	if d, err := st.gate.Image(ctx, m.Digest.String()); err == nil {
		res.Vulns = d.Vulns
	}
	res.Counts = map[string]int{}
	for _, vu := range res.Vulns {
		res.Counts[vu.Severity]++
	}
	if format == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(res); err != nil {
			return err
		}
	} else {
		printCheck(stdout, &res, m.Digest.String())
	}
	if !v.Admitted {
		return errDenied
	}
	return nil
}

func printCheck(w io.Writer, res *checkResult, dgst string) {
	verdict := "ADMITTED"
	if !res.Verdict.Admitted {
		verdict = "DENIED"
	}
	fmt.Fprintf(w, "%s %s@%s\n%s\n\n", verdict, res.Image, dgst, res.Verdict.Message)
	if len(res.Vulns) == 0 {
		fmt.Fprintln(w, "No known vulnerabilities.")
		return
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SEVERITY\tID\tPACKAGE\tINSTALLED\tFIXED\tTITLE")
	for _, v := range res.Vulns {
		title := v.Title
		if len(title) > 60 {
			title = title[:57] + "..."
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", v.Severity, v.ID, v.PkgName, v.Installed, v.Fixed, title)
	}
	tw.Flush()
	var parts []string
	for _, s := range config.Severities {
		if n := res.Counts[s]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", s, n))
		}
	}
	fmt.Fprintf(w, "\nTotal %d (%s)\n", len(res.Vulns), strings.Join(parts, ", "))
}

// parseImage splits an image reference into a configured upstream, the
// repository at that upstream and a tag or digest. A reference without a
// registry host goes to the default upstream, as docker does.
func parseImage(cfg *config.Config, s string) (up, repo, ref string, err error) {
	name := s
	ref = "latest"
	if i := strings.LastIndex(name, "@"); i >= 0 {
		name, ref = name[:i], name[i+1:]
	} else if i := strings.LastIndexByte(name, ':'); i > strings.LastIndexByte(name, '/') {
		name, ref = name[:i], name[i+1:]
	}
	first, rest, ok := strings.Cut(name, "/")
	if ok && (strings.ContainsAny(first, ".:") || first == "localhost") {
		u := cfg.Upstream(first)
		if u == nil {
			return "", "", "", fmt.Errorf("registry %q is not a configured upstream", first)
		}
		up, repo = u.Name, rest
	} else {
		if cfg.DefaultUpstream == "" {
			return "", "", "", fmt.Errorf("%q names no registry and no defaultUpstream is configured", s)
		}
		up, repo = cfg.DefaultUpstream, name
	}
	if up == config.DockerHub && !strings.Contains(repo, "/") {
		repo = "library/" + repo
	}
	if repo == "" || ref == "" {
		return "", "", "", fmt.Errorf("%w: %q is not an image reference", errUsage, s)
	}
	return up, repo, ref, nil
}
