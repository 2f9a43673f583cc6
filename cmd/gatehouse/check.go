package main

import (
	"bytes"
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
	Image    string        `json:"image"`
	Digest   string        `json:"digest"`
	Platform string        `json:"platform,omitempty"`
	Verdict  *gate.Verdict `json:"verdict"`
	// Scanned is false when the image was not scanned (no DB under audit,
	// a rule that does not scan, a scan limit) or its findings could not
	// be read: Vulns is then null, never an empty list that reads as clean.
	Scanned bool           `json:"scanned"`
	Vulns   []gate.Vuln    `json:"vulnerabilities"`
	Counts  map[string]int `json:"counts"`
}

// checkOptions are the flags of gatehouse check.
type checkOptions struct {
	cf       commonFlags
	format   string
	platform string
	remote   remoteOptions
	image    string
}

func (o *checkOptions) register(fs *flag.FlagSet) {
	o.cf.register(fs)
	fs.StringVar(&o.format, "format", "table", "output `FORMAT`: table, json or sarif")
	fs.StringVar(&o.platform, "platform", "linux/amd64", "`OS/ARCH` to judge when IMAGE is a multi-platform index")
	o.remote.register(fs)
}

func check(ctx context.Context, o *checkOptions, out *output) error {
	switch o.format {
	case "table", "json", "sarif":
	default:
		return fmt.Errorf("%w: --format must be table, json or sarif, not %q", errUsage, o.format)
	}
	if _, err := v1.ParsePlatform(o.platform); err != nil {
		return fmt.Errorf("%w: --platform: %v", errUsage, err)
	}
	var res *checkResult
	var err error
	if o.remote.server != "" {
		res, err = checkRemote(ctx, o, out.stderr)
	} else {
		res, err = checkLocal(ctx, o, out.stderr)
	}
	if err != nil {
		return err
	}
	res.Scanned = res.Verdict != nil && !res.Verdict.ScannedAt.IsZero()
	res.Counts = map[string]int{}
	if !res.Scanned {
		res.Vulns = nil
	}
	for _, vu := range res.Vulns {
		res.Counts[vu.Severity]++
	}
	if err := writeCheck(out.stdout, o.format, res); err != nil {
		return err
	}
	if !res.Verdict.Admitted {
		return errDenied
	}
	return nil
}

// checkLocal judges the image in a scratch state under the configuration's
// policy, with the data directory's vulnerability DB.
func checkLocal(ctx context.Context, o *checkOptions, stderr io.Writer) (*checkResult, error) {
	cfg, err := o.cf.load()
	if err != nil {
		return nil, err
	}
	up, repo, ref, err := parseImage(cfg, o.image)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(dbDir(cfg)); errors.Is(err, os.ErrNotExist) {
		// Only read the data directory: a mistyped --data-dir is not created.
		return nil, fmt.Errorf("no vulnerability DB in %s: run 'gatehouse db update' or 'gatehouse db import FILE' first, or point --data-dir (dataDir, GATEHOUSE_DATA_DIR) at a gatehouse data directory", dbDir(cfg))
	}
	log := newLogger(cfg, stderr)
	slog.SetDefault(log)
	// check judges in a scratch state directory, so it can run next to a
	// serving gatehouse; the vulnerability DB comes from the data directory.
	state, err := os.MkdirTemp("", "gatehouse-check-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(state)
	cfg.Gate.MaxWait = config.Duration(time.Hour)
	// Scratch means local stores even where the replicas share S3 and
	// PostgreSQL: a check records nothing in the cluster.
	cfg.Storage = config.Storage{Blobs: config.BlobStorage{Type: config.StorageLocal}, Metadata: config.MetadataStorage{Type: config.StorageBbolt}}
	st, err := newStack(cfg, state, false, log)
	if err != nil {
		return nil, err
	}
	defer st.Close()

	m, err := st.content.Manifest(ctx, up, repo, ref)
	if err != nil {
		return nil, err
	}
	res := &checkResult{Image: o.image, Digest: m.Digest.String()}
	if m.MediaType.IsIndex() {
		found, err := pickPlatform(m.Data, m.Digest.String(), o.platform)
		if err != nil {
			return nil, err
		}
		res.Platform = found.Platform.String()
		if m, err = st.content.Manifest(ctx, up, repo, found.Digest.String()); err != nil {
			return nil, err
		}
		res.Digest = m.Digest.String()
	}
	tag := ""
	if !strings.Contains(ref, ":") {
		tag = ref
	}
	v, err := st.gate.Check(ctx, gate.Subject{Upstream: up, Repo: repo, Tag: tag, Digest: m.Digest, MediaType: m.MediaType, Manifest: m.Data, Client: "gatehouse check"})
	if err != nil {
		return nil, err
	}
	res.Verdict = v
	res.Vulns = []gate.Vuln{}
	if d, err := st.gate.Image(ctx, m.Digest.String()); err == nil && d.Vulns != nil {
		res.Vulns = d.Vulns
	}
	return res, nil
}

// pickPlatform returns the index's manifest for platform.
func pickPlatform(index []byte, dgst, platform string) (*v1.Descriptor, error) {
	want, err := v1.ParsePlatform(platform)
	if err != nil {
		return nil, err
	}
	idx, err := v1.ParseIndexManifest(bytes.NewReader(index))
	if err != nil {
		return nil, fmt.Errorf("index %s: %w", dgst, err)
	}
	for i, d := range idx.Manifests {
		if d.Platform != nil && d.Platform.Satisfies(*want) {
			return &idx.Manifests[i], nil
		}
	}
	return nil, fmt.Errorf("index %s has no manifest for %s", dgst, platform)
}

// writeCheck prints the result in format.
func writeCheck(w io.Writer, format string, res *checkResult) error {
	switch format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	case "sarif":
		return writeSARIF(w, res)
	}
	printCheck(w, res, res.Digest)
	return nil
}

func printCheck(w io.Writer, res *checkResult, dgst string) {
	verdict := "ADMITTED"
	if !res.Verdict.Admitted {
		verdict = "DENIED"
	}
	fmt.Fprintf(w, "%s %s@%s\n%s\n\n", verdict, res.Image, dgst, res.Verdict.Message)
	if !res.Scanned {
		fmt.Fprintln(w, "Vulnerabilities unknown: the image was not scanned (or its findings could not be read).")
		return
	}
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
	name, ref := splitRef(s)
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
