package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/gate"
	"github.com/gatehouse/gatehouse/gate/policy"
	"github.com/gatehouse/gatehouse/gate/records"
	"github.com/gatehouse/gatehouse/storage/boltmeta"
	"github.com/gatehouse/gatehouse/storage/datadir"
)

// recordImages writes two judged and scanned images into dir's gate.db,
// as a serve would have: team/bad denied (vulnerable), team/good admitted.
func recordImages(t *testing.T, dir string) {
	t.Helper()
	st, err := datadir.Open(dir, datadir.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	rs, err := records.Open(ctx, st.Gate, records.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	for i, repo := range []string{"team/bad", "team/good"} {
		dgst := v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%064x", i+1)}
		layer := v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%064x", i+100)}
		m := &records.Manifest{Upstream: "docker.io", Repo: repo, Tag: "v1", Digest: dgst, MediaType: types.OCIManifestSchema1, Kind: "image",
			ArtifactType: string(types.OCIConfigJSON), Layers: []v1.Descriptor{{Digest: layer, Size: 10, MediaType: types.OCILayer}}}
		v := &records.Verdict{Digest: dgst.String(), Upstream: "docker.io", Repo: repo, Admitted: repo == "team/good", Kind: "image",
			Rule: "default", Reason: gate.ReasonClean, Message: "admitted", JudgedAt: time.Now()}
		if !v.Admitted {
			v.Reason, v.Message = gate.ReasonVulnerable, "denied by rule \"default\": CVE-1"
			v.Decision = &policy.Decision{Rule: "default", Blocking: []policy.Finding{{ID: "CVE-1", Severity: "CRITICAL"}}}
		}
		if err := rs.PutReport(ctx, dgst.String(), &records.StoredReport{Report: records.Report{Inventory: []byte(`"x"`), DBVersion: "db"}}); err != nil {
			t.Fatal(err)
		}
		if err := rs.PutVerdict(ctx, records.VerdictKey(dgst.String(), "docker.io", repo, "h", "db"), m, v); err != nil {
			t.Fatal(err)
		}
	}
}

// Local mode over a data directory: a proposal turning the rule off admits
// the denied image (exit 0); a scanning rule with no DB in the directory
// is undetermined, which fails (exit 1) for the admitted image; a
// directory a running gatehouse holds says to use --server.
func TestPolicyTestLocal(t *testing.T) {
	dir := t.TempDir()
	recordImages(t, dir)
	current := writeConfig(t, "dataDir: "+dir+"\n")
	off := writeConfig(t, "gate:\n  policy:\n    rules: [{name: open, mode: off}]\n")

	code, out, errOut := runOut(t, "policy", "test", "--config", off, "--current", current)
	if code != 0 || !strings.Contains(out, "2 images: 0 would become denied, 1 would become admitted, 1 unchanged") ||
		!strings.Contains(out, "docker.io/team/bad@sha256:000000000000") || strings.Contains(out, "team/good") {
		t.Fatalf("off: exit %d\n%s%s", code, out, errOut)
	}
	if _, out, _ := runOut(t, "policy", "test", "--config", off, "--current", current, "--all"); !strings.Contains(out, "team/good") {
		t.Fatalf("--all does not list the unchanged image:\n%s", out)
	}

	strict := writeConfig(t, "gate:\n  policy:\n    rules: [{name: strict, block: [CRITICAL, HIGH]}]\n")
	code, out, errOut = runOut(t, "policy", "test", "--config", strict, "--data-dir", dir, "--format", "json")
	var res gate.DryRunResult
	if err := json.Unmarshal([]byte(out), &res); err != nil || code != 1 {
		t.Fatalf("strict without a DB: exit %d, %v\n%s%s", code, err, out, errOut)
	}
	if s := res.Summary; s.Undetermined != 2 || s.UndeterminedAdmitted != 1 || res.Images[0].Proposed.Verdict != gate.DryUndetermined ||
		!strings.Contains(res.Images[0].Proposed.Message, "no vulnerability DB") {
		t.Fatalf("strict without a DB: %+v", res)
	}

	// A running gatehouse holds the directory's lock.
	held, err := boltmeta.Open(filepath.Join(dir, datadir.CacheFile), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if code, _, errOut := runOut(t, "policy", "test", "--config", off, "--data-dir", dir); code != 2 || !strings.Contains(errOut, "--server") {
		t.Fatalf("locked data directory: exit %d: %s", code, errOut)
	}
}

// Usage and configuration errors exit 2 and name what is wrong; a data
// directory that holds no records is not created.
func TestPolicyTestErrors(t *testing.T) {
	good := writeConfig(t, "gate: {}\n")
	missing := filepath.Join(t.TempDir(), "nope")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"policy", "test"}, "--config FILE"},
		{[]string{"policy", "test", "--config", good, "--format", "sarif"}, "--format"},
		{[]string{"policy", "test", "--config", good, "--server", "http://x", "--current", good}, "--current"},
		{[]string{"policy", "test", "--config", writeConfig(t, "gate:\n  policy:\n    rules: [{name: x, mode: maybe}]\n"), "--data-dir", missing}, "gate.policy.rules[0].mode"},
		{[]string{"policy", "test", "--config", good, "--data-dir", missing}, "no images on record"},
		{[]string{"policy", "nope"}, "unknown policy subcommand"},
	} {
		code, _, errOut := runOut(t, c.args...)
		if code != 2 || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d, want 2 and %q: %s", c.args, code, c.want, errOut)
		}
	}
	if _, err := os.Stat(missing); err == nil {
		t.Error("policy test created the data directory")
	}
}

// --server posts the proposed file to POST /api/v1/policy/test with the
// credentials, and exits 1 when the answer has an image becoming denied;
// the server's 400 (a config error) exits 2 with its message.
func TestPolicyTestServer(t *testing.T) {
	var body, auth string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		body, auth = string(b), r.Header.Get("Authorization")
		if r.Method != http.MethodPost || r.URL.Path != "/api/v1/policy/test" {
			http.NotFound(w, r)
			return
		}
		if strings.Contains(body, "bad") {
			w.WriteHeader(http.StatusBadRequest)
			w.Write([]byte(`{"error": "config: gate.policy.rules[0].mode: \"bad\" is not enforce, audit or off"}`))
			return
		}
		res := gate.DryRunResult{DBVersion: "2", Summary: gate.DryRunSummary{Images: 1, BecomeDenied: 1}, Images: []gate.DryRunImage{{
			Upstream: "docker.io", Repo: "library/app", Digest: "sha256:" + strings.Repeat("ab", 32), Tags: []string{"1.0"}, Change: gate.ChangeDenied,
			Current:  gate.DryRunVerdict{Verdict: "admitted", Rule: "default", Blocking: []policy.Finding{}},
			Proposed: gate.DryRunVerdict{Verdict: "denied", Rule: "strict", Blocking: []policy.Finding{{ID: "CVE-2026-2", Severity: "HIGH"}}}}}}
		json.NewEncoder(w).Encode(res)
	}))
	defer srv.Close()
	token := filepath.Join(t.TempDir(), "token")
	os.WriteFile(token, []byte("s3cret\n"), 0o600)
	proposed := writeConfig(t, "gate:\n  policy:\n    rules: [{name: strict, block: [CRITICAL, HIGH]}]\n")

	code, out, errOut := runOut(t, "policy", "test", "--config", proposed, "--server", srv.URL, "--token-file", token)
	if code != 1 || auth != "Bearer s3cret" || !strings.Contains(body, "name: strict") ||
		!strings.Contains(out, "1 images: 1 would become denied") || !strings.Contains(out, "CVE-2026-2 HIGH") ||
		!strings.Contains(out, "docker.io/library/app@sha256:abababababab") || !strings.Contains(out, "admitted (default)") {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
	bad := writeConfig(t, "gate:\n  policy:\n    rules: [{name: x, mode: bad}]\n")
	if code, _, errOut := runOut(t, "policy", "test", "--config", bad, "--server", srv.URL); code != 2 || !strings.Contains(errOut, "gate.policy.rules[0].mode") {
		t.Fatalf("server's 400: exit %d: %s", code, errOut)
	}
}

// The dry run's exceptions are the proposal's: none when it names none
// (not those in force: a proposal dropping gate.exceptions must show what
// they admitted becoming denied; gate's TestDryRunProposedExceptions),
// its file read now otherwise, the upstreams it names resolved by the
// current configuration's (a proposed file may list no upstreams); a file
// that does not load names the field.
func TestDryRunOptionsExceptions(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	current, err := config.Parse([]byte("upstreams: [{name: registry-1.docker.io, aliases: [docker.io]}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "x.yaml")
	os.WriteFile(p, []byte("exceptions:\n  - {id: CVE-1, upstreams: [docker.io], repositories: [team/app], owner: o, reason: r, expires: 2099-01-01}\n"), 0o600)
	current.Gate.Exceptions.Path = p // in force: never applies to a proposal without it
	proposed, err := config.Parse([]byte("gate:\n  policy:\n    rules: [{name: d, block: [CRITICAL]}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if opts, err := dryRunOptions(proposed, current, nil, log); err != nil || opts.Exceptions != nil {
		t.Fatalf("none proposed: %v %v", opts.Exceptions, err)
	}
	proposed.Gate.Exceptions.Path = p
	opts, err := dryRunOptions(proposed, current, nil, log)
	if err != nil || opts.Exceptions == nil {
		t.Fatalf("proposed: %v %v", opts.Exceptions, err)
	}
	f := policy.Finding{ID: "CVE-1", Severity: "CRITICAL", PkgName: "openssl"}
	if _, ok := opts.Exceptions.Except("registry-1.docker.io", "team/app", "sha256:"+strings.Repeat("a", 64), f, time.Now()); !ok {
		t.Fatal("the proposal's exception does not apply")
	}
	os.WriteFile(p, []byte("exceptions: [{id: CVE-1}]\n"), 0o600)
	if _, err := dryRunOptions(proposed, current, nil, log); err == nil || !strings.Contains(err.Error(), "config: gate.exceptions.path: ") {
		t.Fatalf("bad file: %v", err)
	}
}
