package ui

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/gate/policy"
	"github.com/gatehouse/gatehouse/gate/records"
)

var now = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

// fakeSource serves fixed records.
type fakeSource struct {
	images  []records.ImageSummary
	details map[string]*records.ImageDetail
	denials []records.Denial
	policy  *policy.Policy
}

func (f *fakeSource) Images(context.Context) ([]records.ImageSummary, error) { return f.images, nil }
func (f *fakeSource) Denials() []records.Denial                              { return f.denials }
func (f *fakeSource) Policy() *policy.Policy                                 { return f.policy }
func (f *fakeSource) DBVersion() string                                      { return "test-db" }
func (f *fakeSource) Image(_ context.Context, d string) (*records.ImageDetail, error) {
	if im, ok := f.details[d]; ok {
		return im, nil
	}
	return nil, records.ErrNotFound
}

func digest(i int) string { return fmt.Sprintf("sha256:%064x", i) }

const hostile = `<script>alert("x")</script>`

func newSource() *fakeSource {
	f := &fakeSource{details: map[string]*records.ImageDetail{}, policy: policy.New([]config.Rule{{
		Name: "strict", Repositories: []string{"team/**"}, Mode: config.ModeEnforce, Block: []string{"CRITICAL", "HIGH"},
		Allowlist: []config.Allow{
			{ID: "CVE-2026-0001", Reason: "not reachable " + hostile, Expires: config.Date{Time: now.AddDate(0, 1, 0)}},
			{ID: "CVE-2025-0002", Reason: "old exception", Expires: config.Date{Time: now.AddDate(0, -1, 0)}},
		},
		Signatures: &config.Signatures{Required: true, Identities: []config.Signer{{PublicKey: "/etc/gatehouse/team.pub"},
			{Issuer: "https://token.actions.githubusercontent.com", SubjectRegexp: "^https://github.com/team/"}}},
	}})}
	f.images = []records.ImageSummary{{
		Digest: digest(1), Upstream: "docker.io", Repo: "library/nginx", Tags: []string{"1.27"}, Kind: "image",
		ArtifactType: "application/vnd.oci.image.config.v1+json", Platform: "linux/amd64", Verdict: "admitted", Reason: "clean",
		Counts: map[string]int{"MEDIUM": 2, "LOW": 1}, ScannedAt: now, FirstSeen: now.Add(-48 * time.Hour), LastPulled: now.Add(-time.Hour), Pulls: 7,
	}, {
		Digest: digest(2), Upstream: "ghcr.io", Repo: "team/" + hostile, Tags: []string{"v1"}, Kind: "image", Platform: "linux/arm64",
		Verdict: "denied", Reason: "vulnerable", Rule: "strict", Counts: map[string]int{"CRITICAL": 1, "HIGH": 3}, ScannedAt: now,
		FirstSeen: now.Add(-24 * time.Hour), LastPulled: now.Add(-2 * time.Hour), Pulls: 2,
		Signature: &records.SignatureResult{Reason: "no signature found"},
	}, {
		Digest: digest(3), Upstream: "ghcr.io", Repo: "charts/podinfo", Tags: []string{"6.0.0"}, Kind: "artifact",
		ArtifactType: "application/vnd.cncf.helm.config.v1+json", Verdict: "admitted", Reason: "artifact", Counts: map[string]int{},
		FirstSeen: now.Add(-3 * time.Hour), Pulls: 0,
	}}
	f.details[digest(2)] = &records.ImageDetail{
		ImageRecord: records.ImageRecord{Digest: digest(2), Upstream: "ghcr.io", Repo: "team/" + hostile, Tags: []string{"v1"},
			MediaType: "application/vnd.oci.image.manifest.v1+json", Kind: "image", Platform: "linux/arm64", FirstSeen: now.Add(-24 * time.Hour),
			Layers: []records.LayerRef{{Digest: digest(10), Size: 3 << 20, MediaType: "application/vnd.oci.image.layer.v1.tar+gzip"}, {Digest: digest(11), Size: 1024, MediaType: "application/vnd.oci.image.layer.v1.tar+gzip"}},
			Latest: &records.Verdict{Admitted: false, Rule: "strict", Reason: "vulnerable", Message: `denied by rule "strict": CVE-2026-1111 (CRITICAL)`,
				Decision:  &policy.Decision{Blocking: []policy.Finding{{ID: "CVE-2026-1111", Severity: "CRITICAL", PkgName: "openssl", Installed: "3.0.1", Fixed: "3.0.9"}}},
				Signature: &records.SignatureResult{Reason: "no signature found", VerifiedAt: now}, JudgedAt: now}},
		Vulns: []records.Vuln{
			{ID: "CVE-2026-1111", Severity: "CRITICAL", PkgName: "openssl", Installed: "3.0.1", Fixed: "3.0.9", Status: "fixed",
				Title: "heap overflow " + hostile, Description: "A crafted handshake overflows a buffer.",
				References: []string{"https://advisories.example/CVE-2026-1111", "javascript:alert(1)"}},
			{ID: "CVE-2026-2222", Severity: "HIGH", PkgName: "zlib", Installed: "1.2", Status: "affected", Title: "zlib inflate"},
		},
	}
	f.denials = []records.Denial{
		{Time: now, Client: "10.0.0.7:5123", Upstream: "ghcr.io", Repo: "team/" + hostile, Tag: "v1", Digest: digest(2), Rule: "strict", Message: "denied: CVE-2026-1111"},
		{Time: now.Add(-time.Hour), Client: "10.0.0.8:4000", Upstream: "ghcr.io", Repo: "team/old", Digest: digest(4), Rule: "strict", Message: "denied: CVE-2026-2222"},
	}
	return f
}

func newServer(t *testing.T, src Source) *httptest.Server {
	t.Helper()
	h, err := New(Options{Source: src, Now: func() time.Time { return now }, Log: slog.New(slog.DiscardHandler),
		DB: func() (DBStatus, error) {
			return DBStatus{Version: "2:2026-11-22T06:00:00Z", UpdatedAt: now.Add(-30 * time.Hour)}, nil
		},
		Cache: func() (int64, int64) { return 3 << 30, 12 << 30 }})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/ui/", h)
	mux.Handle("/ui", RedirectHandler())
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

// get fetches path and checks the status; it returns the body.
func get(t *testing.T, srv *httptest.Server, path string, status int) string {
	t.Helper()
	resp, err := http.Get(srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != status {
		t.Fatalf("GET %s: %d, want %d\n%s", path, resp.StatusCode, status, b)
	}
	if ct := resp.Header.Get("Content-Type"); status != 404 && !strings.HasPrefix(ct, "text/") {
		t.Errorf("GET %s: Content-Type %q", path, ct)
	}
	return string(b)
}

func contains(t *testing.T, what, body string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(body, w) {
			t.Errorf("%s lacks %q", what, w)
		}
	}
}

func lacks(t *testing.T, what, body string, bad ...string) {
	t.Helper()
	for _, b := range bad {
		if strings.Contains(body, b) {
			t.Errorf("%s contains %q", what, b)
		}
	}
}

func TestImagesPage(t *testing.T) {
	srv := newServer(t, newSource())
	body := get(t, srv, "/ui/", 200)
	contains(t, "images page", body,
		"docker.io", "library/nginx", "1.27", "000000000001", `href="/ui/images/`+digest(1)+`"`, "linux/amd64", "image",
		"Helm chart", "charts/podinfo", "2026-11-21 12:00:00Z", "1h ago", ">7<", "v-admitted", "v-denied",
		`<abbr title="MEDIUM">M</abbr> 2`, `<abbr title="CRITICAL">C</abbr> 1`, "s-unverified", "not required",
		"&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;", "Images 1–3 of 3")
	lacks(t, "images page", body, hostile)
	// Default order: last pulled, newest first (nginx 1h ago, team 2h, chart never: first seen 3h ago).
	if i, j, k := strings.Index(body, "library/nginx"), strings.Index(body, "team/&lt;"), strings.Index(body, "charts/podinfo"); !(i < j && j < k) {
		t.Errorf("default order: nginx at %d, team at %d, chart at %d", i, j, k)
	}

	body = get(t, srv, "/ui/?verdict=denied", 200)
	contains(t, "denied filter", body, "team/&lt;script", "Images 1–1 of 1 matching (3 judged)")
	lacks(t, "denied filter", body, "library/nginx", "charts/podinfo")

	body = get(t, srv, "/ui/?severity=HIGH", 200)
	contains(t, "severity filter", body, "team/&lt;script")
	lacks(t, "severity filter", body, "library/nginx")
	body = get(t, srv, "/ui/?severity=LOW", 200)
	contains(t, "LOW filter", body, "library/nginx", "team/&lt;script")
	lacks(t, "LOW filter", body, "charts/podinfo")

	body = get(t, srv, "/ui/?upstream=ghcr.io&repository=charts", 200)
	contains(t, "upstream+repository filter", body, "charts/podinfo", `<option selected>ghcr.io</option>`)
	lacks(t, "upstream+repository filter", body, "library/nginx", "team/&lt;")

	body = get(t, srv, "/ui/?sort=pulls&order=asc", 200)
	if i, j, k := strings.Index(body, "charts/podinfo"), strings.Index(body, "team/&lt;"), strings.Index(body, "library/nginx"); !(i < j && j < k) {
		t.Errorf("sort by pulls ascending: chart at %d, team at %d, nginx at %d", i, j, k)
	}
	contains(t, "sorted", body, `aria-sort="ascending"`, `href="/ui/?sort=pulls"`)

	body = get(t, srv, "/ui/?sort=severity", 200)
	if i, j := strings.Index(body, "team/&lt;"), strings.Index(body, "library/nginx"); i > j {
		t.Errorf("sort by severity: the image with a CRITICAL comes after nginx")
	}

	body = get(t, srv, "/ui/?size=1&page=2", 200)
	contains(t, "page 2", body, "Page 2 of 3", `rel="prev" href="/ui/?size=1"`, `rel="next" href="/ui/?page=3&amp;size=1"`, "Images 2–2 of 3")
}

func TestImagesPageBadQuery(t *testing.T) {
	srv := newServer(t, newSource())
	for q, want := range map[string]string{
		"verdict=maybe":    `verdict: &#34;maybe&#34; is not admitted or denied`,
		"severity=BAD":     "severity: &#34;BAD&#34; is not one of CRITICAL, HIGH, MEDIUM, LOW, UNKNOWN",
		"sort=digest":      "sort: &#34;digest&#34; is not one of",
		"order=up":         "order: &#34;up&#34; is not asc or desc",
		"page=0":           "page: &#34;0&#34; is not a page number",
		"page=x":           "page: &#34;x&#34; is not a page number",
		"size=100000":      "size: &#34;100000&#34; is not a page size from 1 to 500",
		"size=-1":          "size: &#34;-1&#34; is not a page size",
		"severity=%3Cb%3E": "severity: &#34;&lt;b&gt;&#34;",
	} {
		body := get(t, srv, "/ui/?"+q, 400)
		contains(t, q, body, want, "400 Bad Request")
	}
	contains(t, "page past the end", get(t, srv, "/ui/?page=9", 404), "Page 9 does not exist: there are 1 pages")
}

// The first page stays small however many images were judged.
func TestImagesPageSize(t *testing.T) {
	src := newSource()
	long := strings.Repeat("x", 60)
	src.images = nil
	for i := range 20000 {
		src.images = append(src.images, records.ImageSummary{
			Digest: digest(100 + i), Upstream: "registry-" + fmt.Sprint(i%7) + ".example.com", Repo: "team-" + fmt.Sprint(i%50) + "/service-" + long,
			Tags: []string{"v1.2.3-" + long, "latest"}, Kind: "image", ArtifactType: "application/vnd.oci.image.config.v1+json",
			Platform: "linux/arm64/v8", Verdict: "denied", Reason: "vulnerable", Rule: "strict",
			Counts:    map[string]int{"CRITICAL": 12, "HIGH": 40, "MEDIUM": 100, "LOW": 300, "UNKNOWN": 4},
			Signature: &records.SignatureResult{Reason: "signed by an untrusted identity"}, ScannedAt: now,
			FirstSeen: now.Add(-time.Duration(i) * time.Minute), LastPulled: now.Add(-time.Duration(i) * time.Second), Pulls: int64(i),
		})
	}
	srv := newServer(t, src)
	body := get(t, srv, "/ui/", 200)
	if n := strings.Count(body, "<tr>") - 1; n != defaultPageSize {
		t.Fatalf("%d rows on the first page, want %d", n, defaultPageSize)
	}
	contains(t, "big list", body, "Images 1–50 of 20000", "Page 1 of 400")
	if len(body) >= 200<<10 {
		t.Errorf("first page is %d bytes; want under 200 KB", len(body))
	}
	t.Logf("first page of 20000 images: %d bytes", len(body))
}

func TestImagePage(t *testing.T) {
	srv := newServer(t, newSource())
	path := "/ui/images/" + digest(2)
	body := get(t, srv, path, 200)
	contains(t, "image page", body,
		"team/&lt;script&gt;", digest(2), "v-denied", "by rule <strong>strict</strong>", "denied by rule &#34;strict&#34;: CVE-2026-1111",
		"Blocking findings", "openssl 3.0.1, fixed in 3.0.9",
		"CVE-2026-1111", "CVE-2026-2222", "heap overflow &lt;script&gt;", "<details><summary>", "A crafted handshake overflows a buffer.",
		`<a href="https://advisories.example/CVE-2026-1111" rel="noreferrer">`, "no fix", "linux/arm64",
		"no signature found", "Layers", "3.0 MiB", "1.0 KiB", "3.0 MiB", "2 of 2 shown")
	lacks(t, "image page", body, hostile, `href="javascript:`)

	body = get(t, srv, path+"?severity=HIGH", 200)
	contains(t, "severity filter", body, "CVE-2026-2222", "1 of 2 shown", "<option selected>HIGH</option>")
	lacks(t, "severity filter", body, "heap overflow")
	body = get(t, srv, path+"?q=OPENSSL", 200)
	contains(t, "search", body, "heap overflow", "1 of 2 shown")
	lacks(t, "search", body, "zlib inflate")

	// A verified signature shows how and by whom.
	src := newSource()
	signed := *src.details[digest(2)]
	latest := *signed.Latest
	latest.Admitted, latest.Signature = true, &records.SignatureResult{Verified: true, Format: "bundle", Identity: "https://github.com/team/app/.github/workflows/release.yml@refs/tags/v1",
		Digest: digest(5), VerifiedAt: now.Add(-time.Minute)}
	signed.Latest, signed.Digest = &latest, digest(6)
	src.details[digest(6)] = &signed
	contains(t, "signed image", get(t, newServer(t, src), "/ui/images/"+digest(6), 200),
		"s-verified", "bundle", "https://github.com/team/app/.github/workflows/release.yml@refs/tags/v1", digest(5), "2026-11-23 11:59:00Z")

	// Attestation checks and VEX suppressions show what was found and
	// from where.
	att := *src.details[digest(2)]
	latest = *att.Latest
	latest.Attestations = []records.AttestationCheck{
		{Requirement: "provenance", Reason: `builder "https://ci.example/attacker" is not one of https://ci.example/trusted*`,
			Found: "SLSA provenance by builder " + hostile},
		{Requirement: "sbom", Passed: true, Found: "https://spdx.dev/Document signed by key=sha256:ab"}}
	latest.Suppressed = []records.Suppression{{ID: "CVE-2026-3333", PkgName: "libcrypto3", PURL: "pkg:apk/alpine/libcrypto3@3.5.0-r0",
		Status: "not_affected", Justification: "vulnerable_code_not_in_execute_path", Source: "attestation signed by key=sha256:ab"}}
	att.Latest, att.Digest = &latest, digest(7)
	src.details[digest(7)] = &att
	body = get(t, newServer(t, src), "/ui/images/"+digest(7), 200)
	contains(t, "attested image", body, "Attestations", "provenance", "failed", "https://ci.example/attacker", "sbom", "passed",
		"Suppressed by VEX", "CVE-2026-3333", "pkg:apk/alpine/libcrypto3@3.5.0-r0", "not_affected (vulnerable_code_not_in_execute_path)",
		"attestation signed by key=sha256:ab")
	lacks(t, "attested image", body, hostile)

	contains(t, "bad digest", get(t, srv, "/ui/images/nope", 400), "&#34;nope&#34; is not a digest")
	contains(t, "bad severity", get(t, srv, path+"?severity=SEVERE", 400), "severity: &#34;SEVERE&#34;")
	contains(t, "unknown digest", get(t, srv, "/ui/images/"+digest(99), 404), "gatehouse has not judged a manifest "+digest(99))
}

func TestPolicyPage(t *testing.T) {
	srv := newServer(t, newSource())
	body := get(t, srv, "/ui/policy", 200)
	contains(t, "policy page", body,
		"strict", "m-enforce", "team/**", `<span class="sev sev-critical">CRITICAL</span>`, `<span class="sev sev-high">HIGH</span>`,
		"block too", "required", "/etc/gatehouse/team.pub", "https://token.actions.githubusercontent.com", "^https://github.com/team/",
		"CVE-2026-0001", "not reachable &lt;script&gt;", "2026-12-23", "CVE-2025-0002", "expired",
		// The built-in rule covers what team/** does not.
		"Repositories no rule matches fall under the built-in rule", "default", "ignored",
		"2:2026-11-22T06:00:00Z", "30h ago", "3.0 GiB used of 12.0 GiB (25%)")
	lacks(t, "policy page", body, hostile)
	src := newSource()
	src.policy = policy.New([]config.Rule{{Name: "attested", Mode: config.ModeEnforce, Vulnerabilities: config.VulnerabilitiesOff,
		Signatures:   &config.Signatures{Required: true, Identities: []config.Signer{{PublicKey: "/k.pub"}}},
		Attestations: &config.Attestations{Provenance: &config.Provenance{BuilderIDs: []string{"https://ci.example/trusted*"}}, SBOM: true},
		VEX:          &config.VEX{Files: []string{"/etc/gatehouse/vex"}}}})
	contains(t, "policy page with attestations", get(t, newServer(t, src), "/ui/policy", 200), "none: not scanned",
		"Attestations required", "SLSA provenance by", "https://ci.example/trusted*", "an SBOM", "VEX", "/etc/gatehouse/vex")
	if strings.Count(body, "expired") != 1 {
		t.Errorf("policy page: want exactly the past allowlist entry marked expired")
	}
}

func TestDenialsPage(t *testing.T) {
	srv := newServer(t, newSource())
	body := get(t, srv, "/ui/denials", 200)
	contains(t, "denials page", body, "Recent refused pulls, newest first: 2", "10.0.0.7:5123", "ghcr.io/team/&lt;script&gt;", ":v1",
		`href="/ui/images/`+digest(2)+`"`, "strict", "denied: CVE-2026-1111", "2026-11-23 12:00:00Z")
	lacks(t, "denials page", body, hostile, `href="/ui/images/`+digest(4)+`"`) // no record: no link to a 404
	if i, j := strings.Index(body, "10.0.0.7"), strings.Index(body, "10.0.0.8"); i < 0 || j < 0 || i > j {
		t.Errorf("denials not newest first")
	}
	empty := newSource()
	empty.denials = nil
	contains(t, "no denials", get(t, newServer(t, empty), "/ui/denials", 200), "No pull has been refused")
}

func TestRoutesAndHeaders(t *testing.T) {
	srv := newServer(t, newSource())
	contains(t, "stylesheet", get(t, srv, "/ui/static/style.css", 200), ".sev-critical")
	contains(t, "unknown page", get(t, srv, "/ui/nope", 404), "No such page: /ui/nope")
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Get(srv.URL + "/ui")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != "/ui/" {
		t.Errorf("GET /ui: %d Location %q, want 301 to /ui/", resp.StatusCode, resp.Header.Get("Location"))
	}
	resp, err = http.PostForm(srv.URL+"/ui/", url.Values{})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /ui/: %d, want 405", resp.StatusCode)
	}
	resp, err = http.Get(srv.URL + "/ui/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") {
		t.Errorf("Content-Security-Policy %q", csp)
	}
}
