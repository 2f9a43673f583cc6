package api

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/gate/policy"
	"github.com/gatehouse/gatehouse/gate/records"
)

// sparseModel is a read model whose records leave every list and map nil:
// what a fresh gate, or a record written by an earlier version, holds.
type sparseModel struct {
	images  []records.ImageSummary
	detail  *records.ImageDetail
	denials []records.Denial
	rules   []config.Rule
}

func (m *sparseModel) Images(context.Context) ([]records.ImageSummary, error) { return m.images, nil }
func (m *sparseModel) Image(context.Context, string) (*records.ImageDetail, error) {
	if m.detail == nil {
		return nil, records.ErrNotFound
	}
	return m.detail, nil
}
func (m *sparseModel) Denials() []records.Denial { return m.denials }
func (m *sparseModel) Policy() *policy.Policy    { return policy.New(m.rules) }
func (m *sparseModel) DBVersion() string         { return "" }

func serveJSON(t *testing.T, h http.Handler, path string) any {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, rec.Code, rec.Body)
	}
	var v any
	if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
		t.Fatalf("GET %s: %v\n%s", path, err, rec.Body)
	}
	return v
}

// walkJSON calls visit for every value of decoded JSON, with its path
// and, for a member of an object, its key.
func walkJSON(v any, path, key string, visit func(path, key string, v any)) {
	visit(path, key, v)
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			walkJSON(e, path+"."+k, k, visit)
		}
	case []any:
		for _, e := range v {
			walkJSON(e, path+"[]", "", visit)
		}
	}
}

// nulls lists the JSON paths whose value is null.
func nulls(v any) []string {
	var out []string
	walkJSON(v, "$", "", func(path, _ string, v any) {
		if v == nil {
			out = append(out, path)
		}
	})
	return out
}

// Every list (and map) of every /api/v1 response is [] (or {}) when
// empty, never null: on a fresh gate (nothing judged, no denials, no
// rules), and inside records whose lists are nil (an image without tags,
// vulnerabilities, layers or counts; a rule without upstreams, blocked
// severities or allowlist; a decision without findings).
func TestAPIEmptyListsAreNotNull(t *testing.T) {
	cfg, err := config.Parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	dgst := digest(1)
	for _, tc := range []struct {
		name  string
		model *sparseModel
		paths []string
	}{
		{"fresh", &sparseModel{}, []string{"/api/v1/images", "/api/v1/images?verdict=denied", "/api/v1/denials", "/api/v1/policy"}},
		{"nil lists inside records", &sparseModel{
			images: []records.ImageSummary{{Digest: dgst, Upstream: "up.example", Repo: "team/app", Kind: "image", Verdict: "admitted"}},
			detail: &records.ImageDetail{ImageRecord: records.ImageRecord{Digest: dgst, Upstream: "up.example", Repo: "team/app", Kind: "image",
				Latest: &records.Verdict{Digest: dgst, Admitted: true, Kind: "image", Reason: "clean",
					Decision:  &policy.Decision{Rule: "r", Mode: "enforce", Admitted: true},
					Signature: &records.SignatureResult{Verified: true}}}},
			denials: []records.Denial{{Digest: dgst, Upstream: "up.example", Repo: "team/app", Rule: "r", Message: "m"}},
			rules: []config.Rule{{Name: "bare", Mode: config.ModeEnforce},
				{Name: "signed", Mode: config.ModeEnforce, Signatures: &config.Signatures{Required: true}}},
		}, []string{"/api/v1/images", "/api/v1/images/" + dgst, "/api/v1/denials", "/api/v1/policy"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := New(Options{Model: tc.model, Config: &cfg.Gate})
			for _, p := range tc.paths {
				if n := nulls(serveJSON(t, h, p)); len(n) > 0 {
					slices.Sort(n)
					t.Errorf("GET %s: null at %s", p, strings.Join(n, ", "))
				}
			}
		})
	}
	// The lists themselves are there, empty.
	h := New(Options{Model: &sparseModel{}, Config: &cfg.Gate})
	for path, key := range map[string]string{"/api/v1/images": "images", "/api/v1/denials": "denials", "/api/v1/policy": "rules"} {
		v := serveJSON(t, h, path).(map[string]any)[key]
		if l, ok := v.([]any); !ok || len(l) != 0 {
			b, _ := json.Marshal(v)
			t.Errorf("GET %s: %q is %s, want []", path, key, b)
		}
	}
}

// camelCase matches a field name in the API's style.
var camelCase = regexp.MustCompile(`^[a-z][a-zA-Z0-9]*$`)

// notCamelCase lists the JSON paths of object keys not in camelCase; the
// keys of a "counts" object are severities (data, not field names).
func notCamelCase(v any) []string {
	var out []string
	walkJSON(v, "$", "", func(path, key string, _ any) {
		if key != "" && !camelCase.MatchString(key) && !strings.HasSuffix(strings.TrimSuffix(path, "."+key), ".counts") {
			out = append(out, path)
		}
	})
	return out
}

// Every field of every /api/v1 response, nested ones included, is named
// in camelCase, with every optional part of the records filled in.
func TestAPIKeysAreCamelCase(t *testing.T) {
	cfg, err := config.Parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	dgst := digest(1)
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	finding := policy.Finding{ID: "CVE-1", Severity: "CRITICAL", PkgName: "openssl", Installed: "1", Fixed: "2"}
	sig := &records.SignatureResult{Verified: true, Format: "bundle", Identity: "key", Digest: dgst, Reason: "r", Detail: "d", VerifiedAt: now}
	rec := records.ImageRecord{Digest: dgst, Upstream: "up.example", Repo: "team/app", Tags: []string{"v1"}, MediaType: "m", Kind: "image",
		ArtifactType: "a", Platform: "linux/amd64", Config: dgst, Layers: []records.LayerRef{{Digest: dgst, Size: 1, MediaType: "m", DiffID: dgst}},
		FirstSeen: now, LastPulled: now, Pulls: 1,
		Latest: &records.Verdict{Digest: dgst, Upstream: "up.example", Repo: "team/app", Kind: "image", Rule: "r", Reason: "vulnerable",
			Message: "m", Signature: sig, PolicyHash: "h", DBVersion: "db", ScannedAt: now, JudgedAt: now,
			Decision: &policy.Decision{Rule: "r", Mode: "enforce", Blocking: []policy.Finding{finding}, Allowlisted: []policy.Finding{finding},
				Counts: map[string]int{"CRITICAL": 1}, Message: "m", ValidUntil: now}}}
	m := &sparseModel{
		images: []records.ImageSummary{{Digest: dgst, Upstream: "up.example", Repo: "team/app", Tags: []string{"v1"}, Kind: "image",
			ArtifactType: "a", Platform: "linux/amd64", Verdict: "denied", Reason: "vulnerable", Rule: "r", Counts: map[string]int{"CRITICAL": 1},
			ScannedAt: now, DBVersion: "db", FirstSeen: now, LastPulled: now, Pulls: 1, Signature: sig}},
		detail: &records.ImageDetail{ImageRecord: rec, Vulns: []records.Vuln{{ID: "CVE-1", Severity: "CRITICAL", SeveritySource: "nvd",
			PkgName: "openssl", PkgType: "apk", PkgPath: "p", Installed: "1", Fixed: "2", Status: "fixed", Title: "t", Description: "d",
			PrimaryURL: "u", References: []string{"u"}, Target: "t"}}},
		denials: []records.Denial{{Time: now, Client: "c", Upstream: "up.example", Repo: "team/app", Tag: "v1", Digest: dgst, Rule: "r", Message: "m"}},
		rules:   []config.Rule{{Name: "r", Mode: config.ModeEnforce, Signatures: &config.Signatures{Identities: []config.Signer{{PublicKey: "k"}}}}},
	}
	h := New(Options{Model: m, Config: &cfg.Gate})
	for _, p := range []string{"/api/v1/images", "/api/v1/images/" + dgst, "/api/v1/denials", "/api/v1/policy"} {
		if bad := notCamelCase(serveJSON(t, h, p)); len(bad) > 0 {
			slices.Sort(bad)
			t.Errorf("GET %s: keys not in camelCase: %s", p, strings.Join(bad, ", "))
		}
	}
}

// keys returns the object keys of a decoded JSON object, sorted.
func keys(t *testing.T, v any, what string) []string {
	t.Helper()
	m, ok := v.(map[string]any)
	if !ok {
		t.Fatalf("%s is %T, want an object", what, v)
	}
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// GET /api/v1/policy names every field as the YAML configuration does
// (camelCase): a rule reads like the rule that was written.
func TestAPIPolicyKeysAreCamelCase(t *testing.T) {
	cfg, err := config.Parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	allowIndex := false
	rule := config.Rule{Name: "signed", Upstreams: []string{"ghcr.io"}, Repositories: []string{"team/**"}, Mode: config.ModeAudit,
		Block: []string{"CRITICAL", "HIGH"}, IgnoreUnfixed: true,
		Allowlist: []config.Allow{{ID: "CVE-2024-1", Reason: "not reachable", Expires: config.Date{Time: time.Date(2027, 1, 2, 0, 0, 0, 0, time.UTC)}}},
		Signatures: &config.Signatures{Required: true, TrustedRoot: "/etc/root.json", RequireTlog: true, RequireSCT: true,
			AllowIndexSignature: &allowIndex, Identities: []config.Signer{{PublicKey: "/etc/key.pem", Issuer: "https://issuer",
				Subject: "me@example.com", IssuerRegexp: "x", SubjectRegexp: "y"}}}}
	h := New(Options{Model: &sparseModel{rules: []config.Rule{rule}}, Config: &cfg.Gate})
	body := serveJSON(t, h, "/api/v1/policy").(map[string]any)
	// The one rule matches ghcr.io/team/** only: the built-in rule judges
	// the rest, and the policy shows it.
	if got, want := keys(t, body, "policy"), []string{"blobs", "builtInRule", "dbVersion", "maxWait", "rules"}; !slices.Equal(got, want) {
		t.Errorf("policy keys %q, want %q", got, want)
	}
	if b, _ := body["builtInRule"].(map[string]any); b["name"] != "default" || b["mode"] != "enforce" || b["ignoreUnfixed"] != true {
		t.Errorf("builtInRule %v, want the built-in default rule", body["builtInRule"])
	}
	catchAll := New(Options{Model: &sparseModel{rules: []config.Rule{{Name: "all", Mode: config.ModeAudit}}}, Config: &cfg.Gate})
	if _, ok := serveJSON(t, catchAll, "/api/v1/policy").(map[string]any)["builtInRule"]; ok {
		t.Error("builtInRule shown although a configured rule matches everything")
	}
	rules, ok := body["rules"].([]any)
	if !ok || len(rules) != 1 {
		t.Fatalf("rules: %v", body["rules"])
	}
	r := rules[0].(map[string]any)
	if got, want := keys(t, r, "rule"), []string{"allowlist", "block", "hash", "ignoreUnfixed", "mode", "name", "repositories",
		"signatures", "staleDB", "upstreams", "vulnerabilities"}; !slices.Equal(got, want) {
		t.Errorf("rule keys %q, want %q", got, want)
	}
	if t.Failed() {
		t.FailNow()
	}
	al := r["allowlist"].([]any)[0]
	if got, want := keys(t, al, "allowlist entry"), []string{"expires", "id", "reason"}; !slices.Equal(got, want) {
		t.Errorf("allowlist keys %q, want %q", got, want)
	}
	sig := r["signatures"]
	if got, want := keys(t, sig, "signatures"), []string{"allowIndexSignature", "identities", "requireSCT", "requireTlog", "required",
		"trustedRoot"}; !slices.Equal(got, want) {
		t.Errorf("signatures keys %q, want %q", got, want)
	}
	id := sig.(map[string]any)["identities"].([]any)[0]
	if got, want := keys(t, id, "identity"), []string{"issuer", "issuerRegexp", "publicKey", "subject", "subjectRegexp"}; !slices.Equal(got, want) {
		t.Errorf("identity keys %q, want %q", got, want)
	}
	if r["ignoreUnfixed"] != true || r["mode"] != "audit" || al.(map[string]any)["expires"] != "2027-01-02" ||
		sig.(map[string]any)["allowIndexSignature"] != false {
		t.Errorf("rule values: %v", r)
	}
}

// yamlKeys returns the YAML keys of a config struct type, recursively
// (path.key), as the configuration file spells them.
func yamlKeys(t reflect.Type, prefix string) []string {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct || t == reflect.TypeFor[config.Date]() {
		return nil
	}
	var out []string
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if !f.IsExported() || name == "-" || name == "" {
			continue
		}
		out = append(out, prefix+name)
		out = append(out, yamlKeys(f.Type, prefix+name+".")...)
	}
	return out
}

// jsonKeys does the same for the API's types.
func jsonKeys(t reflect.Type, prefix string) []string {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return nil
	}
	var out []string
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" || name == "-" {
			name = "<" + f.Name + " has no json name>"
		}
		out = append(out, prefix+name)
		out = append(out, jsonKeys(f.Type, prefix+name+".")...)
	}
	return out
}

// The rules the API shows have exactly the keys of config.Rule's YAML (and
// the hash): a field added to the configuration must be added to the API
// under the same name.
func TestAPIRuleMirrorsConfigKeys(t *testing.T) {
	want := append(yamlKeys(reflect.TypeFor[config.Rule](), ""), "hash")
	got := jsonKeys(reflect.TypeFor[ruleJSON](), "")
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("API rule keys\n  %q\nconfig rule keys\n  %q", got, want)
	}
}
