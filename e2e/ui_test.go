package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/gatehouse/gatehouse/gate/scan/scantest"
)

// uiRule is the enforcing rule of TestWebConsole.
const uiRule = "e2e-console"

// TestWebConsole is issue 7's browser test: headless Chromium walks the web
// console of a gatehouse that judged a clean and a vulnerable image —
// images list → the vulnerable image → a CVE expanded → its reference link
// (to a local advisory page: the test never leaves loopback) — then reads
// the denials page after a real refused pull through the proxy, the policy
// page, and the images list in a narrow window.
//
// With GATEHOUSE_SCREENSHOTS set to a directory (docs/screenshots for the
// README), a PNG of each page is written there.
func TestWebConsole(t *testing.T) {
	requireGatehouse(t)
	chromium := requireChromium(t)

	// The advisory the CVE's reference points to, on loopback.
	advisories := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := strings.TrimPrefix(r.URL.Path, "/advisories/")
		fmt.Fprintf(w, "<!doctype html><title>%s</title><h1>Advisory %s</h1><p>local fixture</p>", id, id)
	}))
	t.Cleanup(advisories.Close)
	localRef := advisories.URL + "/advisories/" + scantest.CVEAlpineOpenSSL
	db := scantest.V1()
	for i := range db.Vulnerabilities {
		v := &db.Vulnerabilities[i]
		v.References = append([]string{advisories.URL + "/advisories/" + v.ID}, v.References...)
	}
	archive := filepath.Join(t.TempDir(), "db.tar.gz")
	if err := os.WriteFile(archive, db.Archive(t), 0o644); err != nil {
		t.Fatal(err)
	}

	reg := StartRegistry(t, RegistryOptions{})
	clean := reg.Push(t, "e2e/console-clean", "v1", scantest.CleanAlpine())
	bad := reg.Push(t, "e2e/console-vulnerable", "v1", scantest.VulnerableAlpine())
	gh := StartGatehouse(t, GatehouseConfig{
		Upstreams: []GatehouseUpstream{reg.Upstream()},
		Gate: &GateConfig{
			DB: GateDB{UpdateInterval: "0s"},
			Policy: GatePolicy{Rules: []GateRule{{
				Name:      uiRule,
				Mode:      "enforce",
				Block:     []string{"CRITICAL", "HIGH"},
				Allowlist: []GateAllow{{ID: "CVE-2000-0001", Reason: "fixture exception", Expires: "2099-12-31"}},
			}}},
		},
		DBArchive: archive,
	})
	ns := "?ns=" + url.QueryEscape(reg.Host)
	accept := "Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
	// Real pulls through the proxy: the clean image is served (twice, so
	// the console shows 2 pulls), the vulnerable one refused.
	for range 2 {
		if res := gh.Do(t, http.MethodGet, "/v2/"+clean.Repo+"/manifests/"+clean.Tag+ns, accept); res.Status != http.StatusOK {
			t.Fatalf("GET clean manifest: %s", res)
		}
	}
	if res := gh.Do(t, http.MethodGet, "/v2/"+bad.Repo+"/manifests/"+bad.Tag+ns, accept); res.Status != http.StatusForbidden {
		t.Fatalf("GET vulnerable manifest: %s; want 403", res)
	}

	ctx := newBrowser(t, chromium)
	shots := os.Getenv("GATEHOUSE_SCREENSHOTS")
	shot := func(name string) chromedp.Action[chromedp.Void] {
		return chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			if shots == "" {
				return nil
			}
			png, err := chromedp.FullScreenshot(100)(ctx, tg)
			if err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(shots, name+".png"), png, 0o644)
		})
	}
	do := func(step string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, steps...); err != nil {
			t.Fatalf("%s: %v", step, err)
		}
	}
	get := func(step string, a chromedp.Action[string]) string {
		t.Helper()
		v, err := chromedp.Run(ctx, a)
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		return v
	}
	text := func(step string, sel chromedp.CSS, want ...string) {
		t.Helper()
		got := get(step, chromedp.Text(sel))
		for _, w := range want {
			if !strings.Contains(got, w) {
				t.Errorf("%s: %q does not show %q:\n%s", step, sel, w, got)
			}
		}
	}
	location := func() string { return get("location", chromedp.Location()) }
	truth := func(step, js string) bool {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[bool](js))
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		return v
	}

	// Images list.
	do("images page", chromedp.Navigate(gh.URL+"/ui/"), chromedp.WaitVisible(chromedp.CSS("table.images")), shot("images"))
	text("images page", "table.images", clean.Repo, bad.Repo, reg.Host, "admitted", "denied", "linux/"+runtime.GOARCH, "image")
	// Column 9 is Pulls.
	if pulls := get("clean row", chromedp.Text(chromedp.Search(fmt.Sprintf(`//tr[td[text()=%q]]/td[9]`, clean.Repo)))); strings.TrimSpace(pulls) != "2" {
		t.Errorf("images page: the clean image shows %q pulls; want 2", pulls)
	}

	// The vulnerable image, by its link in the list.
	do("open image",
		chromedp.Click(chromedp.CSS(fmt.Sprintf(`a[href="/ui/images/%s"]`, bad.Digest))),
		chromedp.WaitVisible(chromedp.CSS("table.vulns")))
	if loc, want := location(), gh.URL+"/ui/images/"+bad.Digest.String(); loc != want {
		t.Errorf("image link led to %s; want %s", loc, want)
	}
	text("image page", "main", bad.Repo, bad.Digest.String(), "denied", uiRule, scantest.CVEAlpineOpenSSL, "CRITICAL", "3.5.0-r0", "3.5.1-r0", "Layers")

	// Expand the CVE: its description and references appear.
	row := fmt.Sprintf(`//table[contains(@class,"vulns")]//tr[td[1][contains(., %q)]]`, scantest.CVEAlpineOpenSSL)
	if truth("CVE closed", `document.evaluate('`+row+`//details', document, null, XPathResult.FIRST_ORDERED_NODE_TYPE, null).singleNodeValue.open`) {
		t.Errorf("the CVE row's details are open before a click")
	}
	do("expand CVE",
		chromedp.Click(chromedp.Search(row+"//summary")),
		chromedp.WaitVisible(chromedp.Search(row+"//details/p")),
		shot("image"))
	if !truth("CVE open", `document.evaluate('`+row+`//details', document, null, XPathResult.FIRST_ORDERED_NODE_TYPE, null).singleNodeValue.open`) {
		t.Errorf("the CVE row's details did not open")
	}
	text("expanded CVE", "table.vulns details[open]", "A crafted ClientHello overflows a heap buffer", localRef,
		"https://nvd.nist.gov/vuln/detail/"+scantest.CVEAlpineOpenSSL)

	// Follow the reference link to the (local) advisory.
	do("follow reference",
		chromedp.Click(chromedp.Search(fmt.Sprintf(`%s//details//a[@href=%q]`, row, localRef))),
		chromedp.WaitVisible(chromedp.Search(fmt.Sprintf(`//h1[text()=%q]`, "Advisory "+scantest.CVEAlpineOpenSSL))))
	if loc := location(); loc != localRef {
		t.Errorf("reference link led to %s; want %s", loc, localRef)
	}

	// Denials: the refused pull, with the rule and the CVE.
	do("denials page", chromedp.Navigate(gh.URL+"/ui/denials"), chromedp.WaitVisible(chromedp.CSS("table.denials")), shot("denials"))
	text("denials page", "table.denials", "127.0.0.1:", reg.Host+"/"+bad.Repo+":"+bad.Tag, uiRule, scantest.CVEAlpineOpenSSL)
	if !truth("denial rows", `document.querySelectorAll("table.denials tbody tr").length === 1`) {
		t.Errorf("denials page: want exactly the 1 refused pull")
	}

	// Policy: the rule as loaded and the fixture DB (built 2099-01-01).
	do("policy page", chromedp.Navigate(gh.URL+"/ui/policy"), chromedp.WaitVisible(chromedp.CSS("section.rule")), shot("policy"))
	text("policy page", "main", uiRule, "enforce", "CRITICAL", "HIGH", "CVE-2000-0001", "fixture exception", "2099-12-31", "2099-01-01", "used")

	// A narrow window: the page itself does not scroll sideways (wide
	// tables scroll inside their own region).
	do("narrow images page",
		chromedp.EmulateViewport(420, 900),
		chromedp.Navigate(gh.URL+"/ui/"), chromedp.WaitVisible(chromedp.CSS("table.images")),
		shot("images-narrow"))
	if truth("narrow overflow", `document.documentElement.scrollWidth > window.innerWidth`) {
		t.Errorf("images page at 420 px scrolls sideways")
	}
}

// requireChromium finds the Chromium binary scripts/deps.sh installs.
func requireChromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("chromium not found (Debian package chromium; run scripts/deps.sh as root)")
	return ""
}

// newBrowser starts headless Chromium for the test: no sandbox (CI runs as
// root), its own profile, no proxy, a 1280 px wide window.
func newBrowser(t *testing.T, chromium string) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.NoSandbox,
		chromedp.Headless,
		chromedp.DisableGPU,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("no-proxy-server", true),
		chromedp.WindowSize(1280, 900),
	)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	ctx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	t.Cleanup(cancelAlloc)
	ctx, cancelCtx := chromedp.NewContext(ctx)
	t.Cleanup(cancelCtx)
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	return ctx
}
