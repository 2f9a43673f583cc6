package api

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/gatehouse/gatehouse/config"
)

// POST /api/v1/policy/test parses the proposal as a configuration file
// (errors name the field, 400), bounds it (413), runs one test at a time
// (429) and answers the tester's result as JSON. How one would try to slip
// past: a huge body to exhaust memory, a malformed proposal to reach the
// tester unvalidated, a flood of tests to pin the CPU; each is refused
// before the tester runs.
func TestAPIPolicyTest(t *testing.T) {
	cfg, err := config.Parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	var got *config.Config
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	tester := func(ctx context.Context, p *config.Config) (any, error) {
		got = p
		if p.Gate.Policy.Rules[0].Name == "slow" {
			started <- struct{}{}
			<-release
		}
		return map[string]any{"summary": map[string]int{"images": 0}, "images": []string(nil)}, nil
	}
	h := New(Options{Model: &fakeModel{}, Config: &cfg.Gate, PolicyTest: tester, Running: cfg})
	post := func(body string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/api/v1/policy/test", strings.NewReader(body)))
		return rec
	}

	rec := post("gate:\n  policy:\n    rules: [{name: strict, block: [CRITICAL, HIGH]}]\n")
	if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `"images": []`) || got == nil || got.Gate.Policy.Rules[0].Name != "strict" {
		t.Fatalf("valid proposal: %d %s", rec.Code, rec.Body)
	}
	// JSON is YAML too.
	if rec := post(`{"gate": {"policy": {"rules": [{"name": "j"}]}}}`); rec.Code != http.StatusOK || got.Gate.Policy.Rules[0].Name != "j" {
		t.Fatalf("JSON proposal: %d %s", rec.Code, rec.Body)
	}
	got = nil
	for body, want := range map[string]string{
		"gate:\n  policy:\n    rules: [{name: x, mode: sometimes}]\n": "gate.policy.rules[0].mode",
		"gate:\n  polcy: {}\n":                   "polcy",
		"":                                       "proposed configuration",
		strings.Repeat("#", MaxPolicyTestBody+1): "larger than 1 MiB",
	} {
		rec := post(body)
		if rec.Code/100 != 4 || !strings.Contains(rec.Body.String(), want) || got != nil {
			t.Fatalf("proposal %.40q: %d %s (tester ran: %v)", body, rec.Code, rec.Body, got != nil)
		}
	}

	done := make(chan *httptest.ResponseRecorder)
	go func() { done <- post("gate:\n  policy:\n    rules: [{name: slow}]\n") }()
	<-started
	if rec := post("gate: {}\n"); rec.Code != http.StatusTooManyRequests || rec.Header().Get("Retry-After") == "" {
		t.Fatalf("second test while one runs: %d", rec.Code)
	}
	close(release)
	if rec := <-done; rec.Code != http.StatusOK {
		t.Fatalf("slow test: %d", rec.Code)
	}

	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/api/v1/policy/test", nil))
	if rec.Code != http.StatusNotFound {
		t.Fatalf("GET (only POST tests): %d", rec.Code)
	}
	rec = httptest.NewRecorder()
	New(Options{Model: &fakeModel{}, Config: &cfg.Gate}).ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/api/v1/policy/test", strings.NewReader("gate: {}")))
	if rec.Code != http.StatusNotImplemented {
		t.Fatalf("without a tester: %d", rec.Code)
	}
}

// TestAPIPolicyTestReadsNoNewFile: a proposal sent to the API may name
// only files the server already reads, and nothing but its gate section is
// looked at. How one would try to slip past: name /etc/shadow (or any
// path) as a public key, trusted root, VEX file or exceptions path to make
// the server open it and tell from the error whether it exists or what it
// holds; or put a TLS, credential or storage file in other sections. Each
// is refused before a file is opened, and other sections are ignored.
func TestAPIPolicyTestReadsNoNewFile(t *testing.T) {
	dir := t.TempDir()
	vexFile := dir + "/vex.json"
	if err := os.WriteFile(vexFile, []byte(openVEX), 0o644); err != nil {
		t.Fatal(err)
	}
	running, err := config.Parse([]byte("gate:\n  policy:\n    rules:\n      - name: default\n        vex: {files: [" + vexFile + "]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	var got *config.Config
	tester := func(_ context.Context, p *config.Config) (any, error) { got = p; return map[string]any{}, nil }
	h := New(Options{Model: &fakeModel{}, Config: &running.Gate, PolicyTest: tester, Running: running})
	post := func(body string) *httptest.ResponseRecorder {
		got = nil
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/api/v1/policy/test", strings.NewReader(body)))
		return rec
	}
	secret := dir + "/not-for-you"
	for body, field := range map[string]string{
		"gate: {policy: {rules: [{name: d, signatures: {required: true, identities: [{publicKey: " + secret + "}]}}]}}":          "gate.policy.rules[0].signatures.identities[0].publicKey",
		"gate: {policy: {rules: [{name: d, signatures: {trustedRoot: " + secret + ", identities: [{issuer: i, subject: s}]}}]}}": "gate.policy.rules[0].signatures.trustedRoot",
		"gate: {policy: {rules: [{name: d, vex: {files: [" + vexFile + ", " + secret + "]}}]}}":                                  "gate.policy.rules[0].vex.files[1]",
		"gate: {exceptions: {path: " + secret + "}}":                                                                             "gate.exceptions.path",
	} {
		rec := post(body)
		if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), field) || !strings.Contains(rec.Body.String(), "not a file the running configuration reads") || got != nil {
			t.Errorf("proposal naming a new file in %s: %d %s", field, rec.Code, rec.Body)
		}
	}
	// The file the server reads already is fine; other sections are not
	// looked at (their files are never opened), and the running
	// configuration's own are kept.
	rec := post("server: {tls: {certFile: " + secret + ", keyFile: " + secret + "}}\nupstreams: [{name: evil.example}]\n" +
		"gate: {policy: {rules: [{name: d, vex: {files: [" + vexFile + "]}}]}}\n")
	if rec.Code != http.StatusOK || got == nil || got.Gate.Policy.Rules[0].Name != "d" || got.Server.TLS.CertFile != "" || got.Upstream("evil.example") != nil {
		t.Errorf("proposal with the server's VEX file and other sections: %d %s (%+v)", rec.Code, rec.Body, got)
	}
}

const openVEX = `{"@context": "https://openvex.dev/ns/v0.2.0", "@id": "https://example.com/vex-1", "author": "t",
 "timestamp": "2026-11-01T00:00:00Z", "version": 1, "statements": []}`
