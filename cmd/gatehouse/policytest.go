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
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/gate"
)

// maxProposedConfig bounds the proposed configuration, here and in the
// API (api.MaxPolicyTestBody).
const maxProposedConfig = 1 << 20

// policyTestOptions are the flags of gatehouse policy test.
type policyTestOptions struct {
	proposed string
	current  string
	dataDir  string
	format   string
	all      bool
	remote   remoteOptions
}

func (o *policyTestOptions) register(fs *flag.FlagSet) {
	fs.StringVar(&o.proposed, "config", "", "the proposed configuration `FILE` (required)")
	fs.StringVar(&o.current, "current", "", "the current configuration `FILE`, whose data directory holds the images on record (default: $GATEHOUSE_CONFIG, else the embedded defaults)")
	fs.StringVar(&o.dataDir, "data-dir", "", "data `DIR` of the images on record (overrides the current dataDir and $GATEHOUSE_DATA_DIR)")
	fs.StringVar(&o.format, "format", "table", "output `FORMAT`: table or json")
	fs.BoolVar(&o.all, "all", false, "table: list the unchanged images too")
	fs.StringVar(&o.remote.server, "server", "", "ask the running gatehouse at `URL` to judge its images (paths in the proposed file are then the server's)")
	fs.StringVar(&o.remote.username, "username", "", "with --server: user `NAME` for its access control; the password is read from $GATEHOUSE_PASSWORD")
	fs.StringVar(&o.remote.tokenFile, "token-file", "", "with --server: `FILE` holding a bearer token (API or pull token)")
	fs.StringVar(&o.remote.caFile, "ca-file", "", "with --server: PEM `FILE` of the CA that signed its certificate")
	fs.BoolVar(&o.remote.insecure, "insecure", false, "with --server: do not verify its certificate")
}

func policyCmd() *command {
	var o policyTestOptions
	return &command{name: "policy", summary: "Try a policy change on the images on record",
		subs: []*command{{name: "policy test", nargs: 0, summary: "Show what a proposed configuration would admit and deny",
			long: `Judges every image on record again, in each repository it was judged in,
under the proposed configuration's gate section (rules, passArtifactTypes,
db.maxAge, exceptions: those of the proposal, none when it names none)
from what is stored: scan reports (detected again with the loaded DB when
made with an older one), and signature results verified under an
identical rule. Nothing is downloaded, verified, scanned or stored. An
image whose proposed verdict needs a signature or attestations not on
record, or a scan never made, is undetermined, never admitted.

Without --server it opens the current configuration's data directory,
which a running gatehouse holds locked: stop it, or use --server. With
--server the running gatehouse judges its own images (POST
/api/v1/policy/test); the files the proposed configuration names (keys,
trusted roots, VEX files) are read on the server.

Exit status: 0 when no image admitted now would be denied; 1 when one
would be, or is undetermined (fail closed); 2 on a usage or configuration
error.`,
			example: "gatehouse policy test --config new.yaml\n" +
				"gatehouse policy test --config new.yaml --all --current /etc/gatehouse/gatehouse.yaml\n" +
				"gatehouse policy test --config new.yaml --format json --server https://gatehouse.internal:5000 --token-file api.token",
			flags: o.register,
			run:   func(ctx context.Context, out *output, _ []string) error { return policyTest(ctx, &o, out) }}}}
}

func policyTest(ctx context.Context, o *policyTestOptions, out *output) error {
	switch {
	case o.proposed == "":
		return fmt.Errorf("%w: --config FILE (the proposed configuration) is required", errUsage)
	case o.format != "table" && o.format != "json":
		return fmt.Errorf("%w: --format must be table or json, not %q", errUsage, o.format)
	case o.remote.server != "" && (o.current != "" || o.dataDir != ""):
		return fmt.Errorf("%w: --server judges the server's images: --current and --data-dir do not apply", errUsage)
	}
	var res *gate.DryRunResult
	var err error
	if o.remote.server != "" {
		res, err = policyTestRemote(ctx, o)
	} else {
		res, err = policyTestLocal(ctx, o)
	}
	if err != nil {
		return err
	}
	if o.format == "json" {
		enc := json.NewEncoder(out.stdout)
		enc.SetIndent("", "  ")
		err = enc.Encode(res)
	} else {
		printDryRun(out.stdout, res, o.all)
	}
	if err == nil && res.Summary.Fails() {
		return errDenied
	}
	return err
}

// policyTestLocal judges the images of the current configuration's data
// directory. Nothing there can fetch: the signature and attestation
// verifiers are stand-ins that refuse, and VEX repositories are not read.
func policyTestLocal(ctx context.Context, o *policyTestOptions) (*gate.DryRunResult, error) {
	proposed, err := config.Load(o.proposed)
	if err != nil {
		return nil, err
	}
	cf := commonFlags{config: o.current, dataDir: o.dataDir}
	cfg, err := cf.load()
	if err != nil {
		return nil, err
	}
	if !cfg.Storage.Shared() {
		if _, err := os.Stat(filepath.Join(cfg.DataDir, "gate.db")); err != nil {
			return nil, fmt.Errorf("no images on record in %s (%v): point --current or --data-dir at a gatehouse's data directory", cfg.DataDir, err)
		}
	}
	log := slog.New(slog.DiscardHandler)
	st, err := openStores(ctx, cfg, cfg.DataDir, false, log)
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("data directory %s is in use by a running gatehouse: ask it with --server URL, or stop it first", cfg.DataDir)
		}
		return nil, err
	}
	defer st.Close()
	sc, err := newScanner(cfg, log, false)
	if err != nil {
		return nil, err
	}
	defer sc.Close()
	g, err := gate.New(gate.Options{Config: &cfg.Gate, Meta: st.Gate, Scanner: sc.ForGate(), Log: log,
		Signatures: noFetch{}, Attestations: noFetch{}, VEX: noFetch{},
		DBBuilt: func() time.Time { s, _ := sc.DBStatus(); return s.UpdatedAt }})
	if err != nil {
		return nil, err
	}
	defer g.Close()
	opts, err := dryRunOptions(proposed, cfg, nil, log)
	if err != nil {
		return nil, err
	}
	return g.DryRun(ctx, &proposed.Gate, opts)
}

// noFetch stands in for what fetches: a dry run asks none of them.
type noFetch struct{}

var errNoFetch = errors.New("not fetched: policy test downloads nothing")

func (noFetch) Verify(context.Context, string, string, v1.Hash, string, *v1.Hash) (*gate.SignatureResult, error) {
	return nil, errNoFetch
}

func (noFetch) Attestations(context.Context, string, string, v1.Hash, string) ([]gate.Attestation, []gate.AttestationRejection, error) {
	return nil, nil, errNoFetch
}

func (noFetch) Apply(_ string, _ gate.VEXImage, vulns []gate.Vuln, _ []gate.Attestation) ([]gate.Vuln, []gate.Suppression) {
	return vulns, nil
}

// dryRunVEX is the VEX filter of the proposed rules: their files, and of
// their repositories what live (the serving gatehouse's filter, nil
// locally) last read of the same reference; none is read now.
func dryRunVEX(proposed *config.Config, live *vexFilter, log *slog.Logger) (gate.VEXFilter, error) {
	vf, err := newVEXFilter(proposed, log)
	if err != nil || vf == nil {
		return nil, err
	}
	if live != nil {
		live.mu.Lock()
		for ref, docs := range live.repoDocs {
			vf.repoDocs[ref] = docs
		}
		live.mu.Unlock()
	}
	return vf, nil
}

// policyTest is the API's dry run on the serving stack (POST
// /api/v1/policy/test).
func (s *stack) policyTest(ctx context.Context, proposed *config.Config) (any, error) {
	opts, err := dryRunOptions(proposed, proposed, s.vex, s.log)
	if err != nil {
		return nil, err
	}
	return s.gate.DryRun(ctx, &proposed.Gate, opts)
}

// dryRunOptions are the proposal's VEX filter (see dryRunVEX) and its
// exceptions: its gate.exceptions read now, the upstreams they name
// resolved by base's (the current configuration's: the records'
// upstreams); none when unset, whatever is in force. Through the API the
// path is one the server reads already (config.ParseGateProposal).
func dryRunOptions(proposed, base *config.Config, live *vexFilter, log *slog.Logger) (gate.DryRunOptions, error) {
	vf, err := dryRunVEX(proposed, live, log)
	if err != nil {
		return gate.DryRunOptions{}, err
	}
	c := *base
	c.Gate = proposed.Gate
	ex, err := openExceptions(&c, log)
	if err != nil || ex == nil {
		return gate.DryRunOptions{VEX: vf}, err // no typed nil: none
	}
	return gate.DryRunOptions{VEX: vf, Exceptions: ex}, nil
}

// policyTestRemote posts the proposed file to a running gatehouse.
func policyTestRemote(ctx context.Context, o *policyTestOptions) (*gate.DryRunResult, error) {
	rc, err := newRemote(&o.remote)
	if err != nil {
		return nil, err
	}
	body, err := readBoundedFile(o.proposed, maxProposedConfig)
	if err != nil {
		return nil, err
	}
	rc.hc.Timeout = 10 * time.Minute // a dry run over many images may detect again with a new DB
	u := rc.base.JoinPath("api", "v1", "policy", "test")
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/yaml")
	req.Header.Set("User-Agent", "gatehouse-policy-test/"+version)
	var res gate.DryRunResult
	if err := rc.apiJSON(req, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// apiJSON sends a JSON API request with the credentials and decodes its
// 200 answer into v; another status is an error with the API's message.
func (rc *remote) apiJSON(req *http.Request, v any) error {
	rc.auth(req)
	resp, err := rc.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return fmt.Errorf("%s: %s", req.URL, ociErrorMessage(b, resp.Status))
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 256<<20)).Decode(v); err != nil {
		return fmt.Errorf("%s: %w", req.URL, err)
	}
	return nil
}

// readBoundedFile reads at most max bytes of path; a bigger file is an
// error.
func readBoundedFile(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err == nil && int64(len(b)) > max {
		err = fmt.Errorf("%s is larger than %d KiB", path, max>>10)
	}
	return b, err
}

// printDryRun writes the summary line and the table of changes (every
// image with all).
func printDryRun(w io.Writer, res *gate.DryRunResult, all bool) {
	s := res.Summary
	parts := []string{fmt.Sprintf("%d would become denied", s.BecomeDenied), fmt.Sprintf("%d would become admitted", s.BecomeAdmitted)}
	if s.Undetermined > 0 {
		parts = append(parts, fmt.Sprintf("%d undetermined (%d admitted now)", s.Undetermined, s.UndeterminedAdmitted))
	}
	parts = append(parts, fmt.Sprintf("%d unchanged", s.Unchanged))
	fmt.Fprintf(w, "%d images: %s\n", s.Images, strings.Join(parts, ", "))
	if s.Images == s.Unchanged && !all {
		return
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CHANGE\tIMAGE\tTAGS\tNOW\tPROPOSED\tWHY")
	for _, im := range res.Images {
		if im.Change == gate.ChangeUnchanged && !all {
			continue
		}
		tags := strings.Join(im.Tags, ",")
		if tags == "" {
			tags = "-"
		}
		fmt.Fprintf(tw, "%s\t%s/%s@%s\t%s\t%s\t%s\t%s\n", im.Change, im.Upstream, im.Repo, shortDigest(im.Digest), tags,
			verdictCell(im.Current), verdictCell(im.Proposed), why(im.Proposed))
	}
	tw.Flush()
}

func shortDigest(d string) string {
	if len(d) > len("sha256:")+12 {
		return d[:len("sha256:")+12]
	}
	return d
}

func verdictCell(v gate.DryRunVerdict) string {
	if v.Rule == "" {
		return v.Verdict
	}
	return v.Verdict + " (" + v.Rule + ")"
}

// why is the blocking CVEs, else the message.
func why(v gate.DryRunVerdict) string {
	if len(v.Blocking) == 0 || v.Verdict == gate.DryUndetermined {
		return v.Message
	}
	var ids []string
	for i, f := range v.Blocking {
		if i == 3 {
			ids = append(ids, fmt.Sprintf("+%d more", len(v.Blocking)-3))
			break
		}
		ids = append(ids, f.ID+" "+f.Severity)
	}
	return strings.Join(ids, ", ")
}
