package e2e

import (
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/gate/scan/scantest"
)

// gateRule is the name of the enforcing rule of TestGate: distinctive, so
// finding it in a client's error proves the reason reached the user.
const gateRule = "e2e-no-critical-or-high"

// vulnerableImage is a scantest fixture the rule denies, and the CVE the
// denial must name (the worst one).
type vulnerableImage struct {
	name  string
	img   v1.Image
	cve   string
	shown []string // further strings the denial message names (package, fixed version)
}

// TestGate is issue 3's acceptance test: containerd and skopeo pulling a
// vulnerable image through gatehouse fail with the reason visible, clean
// images pass byte for byte, and the denial is on record.
//
// The vulnerability DB is the scantest fixture DB, loaded offline with
// `gatehouse db import` before `gatehouse serve` starts; DB updates are
// off. The rule enforces: CRITICAL and HIGH deny, unfixed ones included.
func TestGate(t *testing.T) {
	requireGatehouse(t)
	reg := StartRegistry(t, RegistryOptions{})
	clean := reg.Push(t, "e2e/clean", "v1", scantest.CleanAlpine())
	vulns := []vulnerableImage{{
		name:  "alpine",
		img:   scantest.VulnerableAlpine(),
		cve:   scantest.CVEAlpineOpenSSL, // CRITICAL, libcrypto3/libssl3 3.5.0-r0
		shown: []string{"CRITICAL", "3.5.0-r0", "3.5.1-r0"},
	}, {
		name:  "debian",
		img:   scantest.VulnerableDebian(),
		cve:   scantest.CVEDebianOpenSSL, // HIGH, libssl3
		shown: []string{"HIGH", "libssl3", "3.0.16-1~deb12u1"},
	}, {
		// Two layers: CleanAlpine's (shared with the clean image) and the
		// app's package-lock.json.
		name:  "npm",
		img:   scantest.NodeApp(),
		cve:   scantest.CVENpmMinimist, // CRITICAL, no fix
		shown: []string{"CRITICAL", "minimist", scantest.CVENpmLodash},
	}}
	pushed := make([]Pushed, len(vulns))
	for i, v := range vulns {
		pushed[i] = reg.Push(t, "e2e/vulnerable-"+v.name, "v1", v.img)
	}

	archive := writeTestDB(t)
	gh := StartGatehouse(t, GatehouseConfig{
		Upstreams: []GatehouseUpstream{
			reg.Upstream(), // containerd: ns=127.0.0.1:port
			{Name: skopeoUpstream, URL: reg.URL, TagTTL: "1h"}, // skopeo: path prefix
		},
		Gate: &GateConfig{
			DB: GateDB{UpdateInterval: "0s"},
			Policy: GatePolicy{Rules: []GateRule{{
				Name:  gateRule,
				Mode:  "enforce",
				Block: []string{"CRITICAL", "HIGH"},
			}}},
		},
		DBArchive: archive,
	})
	ns := "?ns=" + url.QueryEscape(reg.Host)

	t.Run("db status", func(t *testing.T) {
		res := gh.Run(t, "db status")
		if res.Err != nil {
			t.Fatalf("gatehouse db status: %v", res)
		}
		// scantest.V1 is dated 2099-01-01.
		if out := res.Output(); !strings.Contains(out, "2099-01-01") {
			t.Errorf("gatehouse db status does not show the imported fixture DB (UpdatedAt 2099-01-01):\n%s", out)
		}
	})

	t.Run("containerd", func(t *testing.T) {
		ctrd := StartContainerd(t)
		// gatehouse is the only host: a mirror that fails makes containerd
		// try the next host, so a gate must also be the server.
		ctrd.SetHosts(t, reg.Host, Hosts{Server: gh.URL})

		t.Run("clean image", func(t *testing.T) {
			ctrd.MustPull(t, clean.Ref(reg.Host), PullOptions{})
			ctrd.AssertContent(t, reg.Content(t, clean.Repo, clean.Digest, nil))
		})
		for i, v := range vulns {
			t.Run("vulnerable "+v.name, func(t *testing.T) {
				p := pushed[i]
				res := ctrd.Pull(t, p.Ref(reg.Host), PullOptions{})
				if res.Err == nil {
					t.Fatalf("ctr pulled %s, which has %s: the gate let it through", p.Ref(reg.Host), v.cve)
				}
				t.Logf("ctr error line: %s", res.LastLine())
				out := res.Output()
				for _, want := range append([]string{v.cve, gateRule, "403"}, v.shown...) {
					if !strings.Contains(out, want) {
						t.Errorf("ctr's output does not show %q:\n%s", want, out)
					}
				}
				if t.Failed() {
					t.Logf("HEAD through gatehouse: %s", gh.Do(t, http.MethodHead, "/v2/"+p.Repo+"/manifests/"+p.Tag+ns))
				}
				// Nothing of the image reached containerd, not even the
				// manifest (the layer it shares with the clean image was
				// pulled with that one).
				objs := reg.Content(t, p.Repo, p.Digest, nil)
				for _, d := range ctrdHave(t, ctrd, objs) {
					if !sharedWith(t, reg, d, clean) {
						t.Errorf("containerd holds %s %s of the denied image", objs[d].Kind, d)
					}
				}
			})
		}
	})

	t.Run("skopeo", func(t *testing.T) {
		// registries.conf sends a pull to the next source when a mirror
		// fails, whatever the status: with gatehouse as the mirror and the
		// upstream reachable as the registry's location, skopeo copies a
		// denied image from the upstream and exits 0. So the gate holds
		// only (a) with gatehouse as the location itself, or (b) as the
		// mirror with direct egress blocked: here the location is then a
		// tripwire with no upstream (502 to everything), which records the
		// attempt; that no request reached the upstream holds either way.
		blocked := StartTripwire(t, "")
		for _, setup := range []struct {
			name string
			reg  SkopeoRegistry
			// fallback: skopeo tries the (blocked) location after a
			// refusal of the mirror.
			fallback bool
		}{{
			name: "gatehouse as location",
			reg:  SkopeoRegistry{Prefix: skopeoUpstream, Location: gh.Host + "/" + skopeoUpstream},
		}, {
			name:     "gatehouse as mirror, egress blocked",
			reg:      SkopeoRegistry{Prefix: skopeoUpstream, Location: blocked.Host, Mirrors: []string{gh.Host + "/" + skopeoUpstream}},
			fallback: true,
		}} {
			t.Run(setup.name, func(t *testing.T) {
				sk := NewSkopeo(t, setup.reg)
				t.Run("clean image", func(t *testing.T) {
					blocked.Reset()
					dir, res := sk.CopyToDir(t, "docker://"+clean.Ref(skopeoUpstream))
					if res.Err != nil {
						t.Fatalf("skopeo copy of the clean image through gatehouse failed: %v", res)
					}
					AssertDir(t, dir, clean.Digest.String(), reg.Content(t, clean.Repo, clean.Digest, nil))
					blocked.AssertUntouched(t)
				})
				for i, v := range vulns {
					t.Run("vulnerable "+v.name, func(t *testing.T) {
						p := pushed[i]
						blocked.Reset()
						dir, res := sk.CopyToDir(t, "docker://"+p.Ref(skopeoUpstream))
						if res.Err == nil {
							t.Errorf("skopeo copied %s, which has %s", p.Ref(skopeoUpstream), v.cve)
						}
						t.Logf("skopeo error line: %s", res.LastLine())
						out := res.Output()
						for _, want := range append([]string{v.cve, gateRule}, v.shown...) {
							if !strings.Contains(out, want) {
								t.Errorf("skopeo's output does not show %q:\n%s", want, out)
							}
						}
						// dir: holds only the "version" file the transport
						// writes when it opens the destination.
						left, _ := filepath.Glob(filepath.Join(dir, "*"))
						left = slices.DeleteFunc(left, func(f string) bool { return filepath.Base(f) == "version" })
						if len(left) > 0 {
							t.Errorf("skopeo wrote %d file(s) of the denied image: %v", len(left), left)
						}
						if !setup.fallback {
							blocked.AssertUntouched(t)
						} else if hits := blocked.Hits(); len(hits) > 0 {
							t.Logf("skopeo fell back to the blocked location after gatehouse's refusal (refused there too):\n  %s", strings.Join(hits, "\n  "))
						}
					})
				}
			})
		}
	})

	t.Run("blobs of denied images", func(t *testing.T) {
		for i, v := range vulns {
			p := pushed[i]
			objs := reg.Content(t, p.Repo, p.Digest, nil)
			for _, d := range objs.Digests() {
				kind := objs[d].Kind
				if strings.HasPrefix(kind, "manifest") {
					continue
				}
				shared := sharedWith(t, reg, d, clean)
				for _, path := range []string{
					"/v2/" + p.Repo + "/blobs/" + d + ns,                   // containerd
					"/v2/" + skopeoUpstream + "/" + p.Repo + "/blobs/" + d, // skopeo
				} {
					for _, method := range []string{http.MethodGet, http.MethodHead} {
						resp := gh.Do(t, method, path)
						// Deny wins: a layer the denied image shares with
						// the admitted clean image is refused through the
						// denied image's repository too (it is served
						// through the clean image's, below).
						switch {
						case resp.Status != http.StatusForbidden:
							t.Errorf("%s %s (%s of the denied %s image, shared with the clean image: %v): %s; want 403", method, path, kind, v.name, shared, resp)
						case method == http.MethodGet && (len(resp.OCIErrors()) == 0 || resp.OCIErrors()[0].Code != "DENIED"):
							t.Errorf("%s %s: body %q; want an OCI error with code DENIED", method, path, resp.Body)
						}
						if !shared {
							continue
						}
						cleanPath := strings.Replace(path, p.Repo, clean.Repo, 1)
						if resp := gh.Do(t, method, cleanPath); resp.Status != http.StatusOK {
							t.Errorf("%s %s (%s, a layer of the admitted clean image that the denied %s image shares): %s; want 200", method, cleanPath, kind, v.name, resp)
						}
					}
				}
			}
		}
		// Unknown everywhere: no admitted manifest references it either.
		zero := "sha256:" + strings.Repeat("0", 64)
		if resp := gh.Do(t, http.MethodGet, "/v2/e2e/clean/blobs/"+zero+ns); resp.Status != http.StatusForbidden {
			t.Errorf("GET unknown blob: %s; want 403 under gate.blobs admitted", resp)
		}
	})

	t.Run("manifest requests", func(t *testing.T) {
		p, v := pushed[0], vulns[0]
		accept := "Accept: application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"
		for _, ref := range []string{p.Tag, p.Digest.String()} {
			get := gh.Do(t, http.MethodGet, "/v2/"+p.Repo+"/manifests/"+ref+ns, accept)
			errs := get.OCIErrors()
			if get.Status != http.StatusForbidden || len(errs) == 0 || errs[0].Code != "DENIED" {
				t.Errorf("GET manifest %s: %s; want 403 DENIED", ref, get)
				continue
			}
			if !strings.Contains(errs[0].Message, v.cve) || !strings.Contains(errs[0].Message, gateRule) {
				t.Errorf("GET manifest %s: message %q does not name %s and rule %q", ref, errs[0].Message, v.cve, gateRule)
			}
			var detail struct {
				Rule   string `json:"rule"`
				Digest string `json:"digest"`
			}
			if err := json.Unmarshal(errs[0].Detail, &detail); err != nil || detail.Rule != gateRule || detail.Digest != p.Digest.String() {
				t.Errorf("GET manifest %s: detail %s; want rule %q and digest %s", ref, errs[0].Detail, gateRule, p.Digest)
			}
			head := gh.Do(t, http.MethodHead, "/v2/"+p.Repo+"/manifests/"+ref+ns, accept)
			if head.Status != http.StatusForbidden || !strings.Contains(head.Header.Get("X-Gatehouse-Error"), v.cve) {
				t.Errorf("HEAD manifest %s: %s, X-Gatehouse-Error %q; want 403 naming %s", ref, head, head.Header.Get("X-Gatehouse-Error"), v.cve)
			}
		}
	})

	t.Run("api", func(t *testing.T) {
		var denials struct {
			Denials []struct {
				Upstream string `json:"upstream"`
				Repo     string `json:"repository"`
				Tag      string `json:"tag"`
				Digest   string `json:"digest"`
				Rule     string `json:"rule"`
				Message  string `json:"message"`
			} `json:"denials"`
		}
		gh.API(t, "/api/v1/denials", &denials)
		for i, v := range vulns {
			p := pushed[i]
			// Refused to containerd (ns) and to skopeo (path prefix).
			for _, up := range []string{reg.Host, skopeoUpstream} {
				found := false
				for _, d := range denials.Denials {
					if d.Upstream == up && d.Repo == p.Repo && d.Digest == p.Digest.String() {
						found = true
						if d.Rule != gateRule || !strings.Contains(d.Message, v.cve) {
							t.Errorf("denial of %s/%s: rule %q, message %q; want rule %q and %s", up, p.Repo, d.Rule, d.Message, gateRule, v.cve)
						}
					}
				}
				if !found {
					t.Errorf("GET /api/v1/denials lists no refusal of %s/%s@%s; got %+v", up, p.Repo, p.Digest, denials.Denials)
				}
			}
		}
		for _, d := range denials.Denials {
			if d.Digest == clean.Digest.String() {
				t.Errorf("GET /api/v1/denials lists the clean image: %+v", d)
			}
		}

		var list struct {
			Total  int `json:"total"`
			Images []struct {
				Digest  string `json:"digest"`
				Verdict string `json:"verdict"`
				Rule    string `json:"rule"`
			} `json:"images"`
		}
		gh.API(t, "/api/v1/images", &list)
		verdicts := map[string]string{}
		for _, im := range list.Images {
			verdicts[im.Digest] = im.Verdict
		}
		if got := verdicts[clean.Digest.String()]; got != "admitted" {
			t.Errorf("GET /api/v1/images: clean image %s has verdict %q; want admitted (list: %+v)", clean.Digest, got, list.Images)
		}
		for _, p := range pushed {
			if got := verdicts[p.Digest.String()]; got != "denied" {
				t.Errorf("GET /api/v1/images: %s@%s has verdict %q; want denied", p.Repo, p.Digest, got)
			}
		}

		// The Alpine image in detail: CVEAlpineOpenSSL in both packages of
		// origin openssl, and the MEDIUM busybox one the rule lets pass.
		p := pushed[0]
		var detail imageDetail
		gh.API(t, "/api/v1/images/"+p.Digest.String(), &detail)
		if detail.Digest != p.Digest.String() || detail.Repo != p.Repo || detail.Verdict == nil || detail.Verdict.Admitted {
			t.Errorf("GET /api/v1/images/%s: digest %q, repository %q, verdict %+v; want the denied %s", p.Digest, detail.Digest, detail.Repo, detail.Verdict, p.Repo)
		}
		for _, want := range []apiVuln{
			{ID: scantest.CVEAlpineOpenSSL, Severity: "CRITICAL", PkgName: "libcrypto3", Installed: "3.5.0-r0", Fixed: "3.5.1-r0"},
			{ID: scantest.CVEAlpineOpenSSL, Severity: "CRITICAL", PkgName: "libssl3", Installed: "3.5.0-r0", Fixed: "3.5.1-r0"},
			{ID: scantest.CVEAlpineBusybox, Severity: "MEDIUM", PkgName: "busybox", Installed: "1.37.0-r18", Fixed: "1.37.0-r19"},
		} {
			if !slices.Contains(detail.Vulns, want) {
				t.Errorf("GET /api/v1/images/%s lacks %+v; vulnerabilities: %+v", p.Digest, want, detail.Vulns)
			}
		}
		if len(detail.Layers) != 1 {
			t.Errorf("GET /api/v1/images/%s: %d layers; want 1", p.Digest, len(detail.Layers))
		}

		var cleanDetail imageDetail
		gh.API(t, "/api/v1/images/"+clean.Digest.String(), &cleanDetail)
		if cleanDetail.Verdict == nil || !cleanDetail.Verdict.Admitted || len(cleanDetail.Vulns) != 0 {
			t.Errorf("GET /api/v1/images/%s (clean): verdict %+v, vulnerabilities %+v; want admitted with none", clean.Digest, cleanDetail.Verdict, cleanDetail.Vulns)
		}
	})

	t.Run("check", func(t *testing.T) {
		for i, v := range vulns {
			ref := pushed[i].Ref(reg.Host)
			res := gh.Run(t, "check", ref)
			if res.ExitCode() != 1 {
				t.Errorf("gatehouse check %s: exit %d; want 1 (denied): %v", ref, res.ExitCode(), res)
			}
			if !strings.Contains(string(res.Stdout), v.cve) || !strings.Contains(string(res.Stdout), "DENIED") {
				t.Errorf("gatehouse check %s does not print DENIED and %s:\n%s", ref, v.cve, res.Output())
			}
		}

		ref := pushed[0].Ref(reg.Host)
		res := gh.Run(t, "check", "--format", "json", ref)
		var out struct {
			Digest  string `json:"digest"`
			Verdict struct {
				Admitted bool   `json:"admitted"`
				Message  string `json:"message"`
			} `json:"verdict"`
			Vulns  []apiVuln      `json:"vulnerabilities"`
			Counts map[string]int `json:"counts"`
		}
		if res.ExitCode() != 1 {
			t.Errorf("gatehouse check --format json %s: exit %d; want 1: %v", ref, res.ExitCode(), res)
		} else if err := json.Unmarshal(res.Stdout, &out); err != nil {
			t.Errorf("gatehouse check --format json %s: %v\n%s", ref, err, res.Stdout)
		} else {
			if out.Digest != pushed[0].Digest.String() || out.Verdict.Admitted || !strings.Contains(out.Verdict.Message, vulns[0].cve) {
				t.Errorf("gatehouse check --format json %s: digest %s, verdict %+v; want %s denied for %s", ref, out.Digest, out.Verdict, pushed[0].Digest, vulns[0].cve)
			}
			if out.Counts["CRITICAL"] != 2 || !slices.ContainsFunc(out.Vulns, func(v apiVuln) bool { return v.ID == vulns[0].cve }) {
				t.Errorf("gatehouse check --format json %s: counts %v, vulnerabilities %+v; want 2 CRITICAL with %s", ref, out.Counts, out.Vulns, vulns[0].cve)
			}
		}

		ref = clean.Ref(reg.Host)
		res = gh.Run(t, "check", ref)
		if res.ExitCode() != 0 {
			t.Errorf("gatehouse check %s (clean): exit %d; want 0: %v", ref, res.ExitCode(), res)
		} else if !strings.Contains(string(res.Stdout), "ADMITTED") {
			t.Errorf("gatehouse check %s (clean) does not print ADMITTED:\n%s", ref, res.Output())
		}

		// --server asks the running gatehouse: the pull goes through its
		// registry API, so its verdict and its findings come back.
		ref = pushed[0].Ref(reg.Host)
		res = gh.Run(t, "check", "--server", gh.URL, "--format", "json", ref)
		out.Vulns, out.Counts = nil, nil
		if res.ExitCode() != 1 {
			t.Errorf("gatehouse check --server %s: exit %d; want 1: %v", ref, res.ExitCode(), res)
		} else if err := json.Unmarshal(res.Stdout, &out); err != nil {
			t.Errorf("gatehouse check --server --format json %s: %v\n%s", ref, err, res.Stdout)
		} else if out.Digest != pushed[0].Digest.String() || out.Verdict.Admitted || !strings.Contains(out.Verdict.Message, vulns[0].cve) ||
			out.Counts["CRITICAL"] != 2 || !slices.ContainsFunc(out.Vulns, func(v apiVuln) bool { return v.ID == vulns[0].cve }) {
			t.Errorf("gatehouse check --server %s: %+v; want %s denied for %s with its findings", ref, out, pushed[0].Digest, vulns[0].cve)
		}
		ref = clean.Ref(reg.Host)
		if res = gh.Run(t, "check", "--server", gh.URL, ref); res.ExitCode() != 0 || !strings.Contains(string(res.Stdout), "ADMITTED") {
			t.Errorf("gatehouse check --server %s (clean): exit %d; want 0 and ADMITTED: %v", ref, res.ExitCode(), res.Output())
		}
	})

	t.Run("after restart", func(t *testing.T) {
		// The imported DB, the verdicts and the blob admissions live in
		// the data directory: a restarted gatehouse judges the same.
		gh.Restart(t)
		// The refusals made before the restart are still on record (a
		// graceful stop writes the queued ones).
		type denial struct {
			Upstream string `json:"upstream"`
			Repo     string `json:"repository"`
			Digest   string `json:"digest"`
			Rule     string `json:"rule"`
		}
		var denials struct {
			Denials []denial `json:"denials"`
		}
		gh.API(t, "/api/v1/denials", &denials)
		for _, up := range []string{reg.Host, skopeoUpstream} {
			if !slices.ContainsFunc(denials.Denials, func(d denial) bool {
				return d.Upstream == up && d.Repo == pushed[0].Repo && d.Digest == pushed[0].Digest.String() && d.Rule == gateRule
			}) {
				t.Errorf("after a restart, GET /api/v1/denials lists no refusal of %s/%s@%s: %+v", up, pushed[0].Repo, pushed[0].Digest, denials.Denials)
			}
		}
		ctrd := StartContainerd(t)
		ctrd.SetHosts(t, reg.Host, Hosts{Server: gh.URL})
		ctrd.MustPull(t, clean.Ref(reg.Host), PullOptions{})
		ctrd.AssertContent(t, reg.Content(t, clean.Repo, clean.Digest, nil))
		p, v := pushed[0], vulns[0]
		res := ctrd.Pull(t, p.Ref(reg.Host), PullOptions{})
		if res.Err == nil {
			t.Fatalf("after a restart, ctr pulled %s, which has %s", p.Ref(reg.Host), v.cve)
		}
		if out := res.Output(); !strings.Contains(out, v.cve) || !strings.Contains(out, gateRule) {
			t.Errorf("after a restart, ctr's error does not name %s and rule %q:\n%s", v.cve, gateRule, out)
		}
		cfg, err := v.img.ConfigName()
		if err != nil {
			t.Fatal(err)
		}
		if resp := gh.Do(t, http.MethodGet, "/v2/"+p.Repo+"/blobs/"+cfg.String()+ns); resp.Status != http.StatusForbidden {
			t.Errorf("after a restart, GET the denied image's config blob: %s; want 403", resp)
		}
	})
}

// apiVuln is what the tests read of a gate.Vuln in the JSON API.
type apiVuln struct {
	ID        string `json:"id"`
	Severity  string `json:"severity"`
	PkgName   string `json:"pkgName"`
	Installed string `json:"installed"`
	Fixed     string `json:"fixed"`
}

// imageDetail is what the tests read of GET /api/v1/images/<digest>.
type imageDetail struct {
	Digest  string `json:"digest"`
	Repo    string `json:"repository"`
	Layers  []any  `json:"layers"`
	Verdict *struct {
		Admitted bool   `json:"admitted"`
		Message  string `json:"message"`
	} `json:"verdict"`
	Vulns []apiVuln `json:"vulnerabilities"`
}

// ctrdHave returns the digests of objs that containerd's content store
// holds.
func ctrdHave(t testing.TB, c *Containerd, objs Objects) []string {
	t.Helper()
	have := c.ContentDigests(t)
	var out []string
	for _, d := range objs.Digests() {
		if slices.Contains(have, d) {
			out = append(out, d)
		}
	}
	return out
}

// sharedWith reports whether blob dgst is part of image p as well.
func sharedWith(t testing.TB, reg *Registry, dgst string, p Pushed) bool {
	t.Helper()
	_, ok := reg.Content(t, p.Repo, p.Digest, nil)[dgst]
	return ok
}

// writeTestDB writes scantest's V1 vulnerability DB as a db.tar.gz for
// GatehouseConfig.DBArchive and returns its path.
func writeTestDB(t *testing.T) string {
	t.Helper()
	archive := filepath.Join(t.TempDir(), "db.tar.gz")
	if err := os.WriteFile(archive, scantest.V1().Archive(t), 0o644); err != nil {
		t.Fatal(err)
	}
	return archive
}
