package config

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

func TestDefaultsAreValid(t *testing.T) {
	cfg := Default()
	if err := cfg.Finish(); err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != ":5000" || cfg.DefaultUpstream != "docker.io" {
		t.Fatalf("defaults: %+v", cfg)
	}
	for _, name := range []string{"docker.io", "ghcr.io", "quay.io", "registry.k8s.io", "gcr.io", "mcr.microsoft.com", "public.ecr.aws"} {
		if cfg.Upstream(name) == nil {
			t.Errorf("default upstream %s missing", name)
		}
	}
	if u := cfg.Upstream("registry-1.docker.io"); u == nil || u.Name != "docker.io" || u.URL != "https://registry-1.docker.io" {
		t.Errorf("docker.io alias: %+v", u)
	}
	if u := cfg.Upstream("ghcr.io"); u.URL != "https://ghcr.io" || u.TagTTL.D() != 5*time.Minute || *u.Retries != 2 {
		t.Errorf("upstream defaults: %+v", u)
	}
}

func TestFileReplacesUpstreamsAndKeepsOtherDefaults(t *testing.T) {
	cfg, err := Parse([]byte(`
upstreams:
  - name: registry.internal:5000
    url: http://registry.internal:5000
    tagTTL: 0s
defaultUpstream: registry.internal:5000
cache:
  maxSize: 20GiB
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Upstreams) != 1 || cfg.Upstream("docker.io") != nil {
		t.Fatalf("upstreams not replaced: %+v", cfg.Upstreams)
	}
	if cfg.Upstreams[0].TagTTL.D() != 0 {
		t.Fatalf("explicit tagTTL 0 not kept")
	}
	if cfg.Cache.MaxSize != 20<<30 || cfg.Listen != ":5000" {
		t.Fatalf("cfg %+v", cfg)
	}
}

func TestEmptyFileIsDefaults(t *testing.T) {
	cfg, err := Parse(nil)
	if err != nil || len(cfg.Upstreams) != 7 {
		t.Fatalf("%v %+v", err, cfg)
	}
}

func TestErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct{ yaml, field string }{
		{"listen: nope", "listen"},
		{"log: {format: xml}", "log.format"},
		{"log: {level: loud}", "log.level"},
		{"cache: {maxSize: lots}", "lots"},
		{"upstreams: [{name: 'bad host'}]", "upstreams[0].name"},
		{"upstreams: [{name: a.io, url: 'ftp://a.io'}]", "upstreams[0].url"},
		{"upstreams: [{name: a.io, url: 'https://a.io/path'}]", "upstreams[0].url"},
		{"upstreams: [{name: a.io, password: x}]", "upstreams[0].username"},
		{"upstreams: [{name: a.io, tagTTL: soon}]", "soon"},
		{"upstreams: [{name: a.io, retries: 99}]", "upstreams[0].retries"},
		{"upstreams: [{name: a.io, maxConcurrentFetches: -1}]", "upstreams[0].maxConcurrentFetches"},
		{"upstreams: [{name: a.io, stallTimeout: -1s}]", "upstreams[0].stallTimeout"},
		{"upstreams: [{name: a.io, resumeAfter: -1s}]", "upstreams[0].resumeAfter"},
		{"upstreams: [{name: a.io, resumeAfter: 2m}]", "upstreams[0].resumeAfter"},
		{"upstreams: [{name: a.io, stallTimeout: 10s, resumeAfter: 20s}]", "upstreams[0].resumeAfter"},
		{"upstreams: [{name: a.io, connectTimeout: -5s}]", "upstreams[0].connectTimeout"},
		{"upstreams: [{name: a.io, caFile: /does/not/exist}]", "upstreams[0].caFile"},
		{"upstreams: [{name: a.io}, {name: A.io}]", "upstreams[1]"},
		{"upstreams: [{name: a.io}]\ndefaultUpstream: b.io", "defaultUpstream"},
		{"upstreams: []", "upstreams"},
		{"listne: ':5000'", "listne"},
		{"gate: {scanLimits: {maxLayerFiles: -1}}", "gate.scanLimits.maxLayerFiles"},
		{"gate: {scanLimits: {maxLayerSize: -1}}", "-1"},
		{"gate: {scanLimits: {maxLayerSize: big}}", "big"},
		{"gate: {policy: {rules: [{name: a, vulnerabilities: off}]}}", "gate.policy.rules[0].vulnerabilities: off checks nothing"},
		{"gate: {policy: {rules: [{name: a, vulnerabilities: maybe}]}}", `gate.policy.rules[0].vulnerabilities: "maybe" is not on or off`},
		{"gate: {policy: {rules: [{name: a, staleDB: ignore}]}}", `gate.policy.rules[0].staleDB: "ignore" is not deny or warn`},
		{"gate: {db: {maxAge: 1h, updateInterval: 6h}}", "gate.db.maxAge: 1h is shorter than db.updateInterval 6h"},
		{"gate: {db: {maxAge: -1h}}", "gate.db.maxAge: must not be negative"},
	} {
		_, err := Parse([]byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%q: error %v does not name %s", tc.yaml, err, tc.field)
		}
	}
}

// resumeAfter defaults to 5s, and to half of a stallTimeout of 10s or
// less, so that a resume comes before the download fails.
func TestResumeAfterDefaults(t *testing.T) {
	for _, tc := range []struct {
		yaml string
		want time.Duration
	}{
		{"upstreams: [{name: a.io}]", 5 * time.Second},
		{"upstreams: [{name: a.io, stallTimeout: 4s}]", 2 * time.Second},
		{"upstreams: [{name: a.io, resumeAfter: 1s}]", time.Second},
		{"upstreams: [{name: a.io, stallTimeout: 4s, resumeAfter: 3s}]", 3 * time.Second},
	} {
		cfg, err := Parse([]byte(tc.yaml))
		if err != nil {
			t.Fatalf("%q: %v", tc.yaml, err)
		}
		if got := cfg.Upstreams[0].ResumeAfter.D(); got != tc.want {
			t.Errorf("%q: resumeAfter %v, want %v", tc.yaml, got, tc.want)
		}
	}
}

func TestEnvironmentOverrides(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "gatehouse.yaml")
	os.WriteFile(file, []byte("listen: ':6000'\n"), 0o600)
	t.Setenv("GATEHOUSE_LISTEN", "127.0.0.1:7000")
	t.Setenv("GATEHOUSE_DATA_DIR", dir)
	t.Setenv("GATEHOUSE_CACHE_MAX_SIZE", "1GiB")
	cfg, err := Load(file)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "127.0.0.1:7000" || cfg.DataDir != dir || cfg.Cache.MaxSize != 1<<30 {
		t.Fatalf("env not applied: %+v", cfg)
	}
	t.Setenv("GATEHOUSE_CACHE_MAX_SIZE", "huge")
	if _, err := Load(file); err == nil || !strings.Contains(err.Error(), "GATEHOUSE_CACHE_MAX_SIZE") {
		t.Fatalf("bad env value: %v", err)
	}
}

func TestByteSize(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "": 0, "512": 512, "1KiB": 1024, "1.5GiB": 3 << 29, "2GB": 2e9, "10M": 10 << 20} {
		var b ByteSize
		if err := b.parse(in); err != nil || int64(b) != want {
			t.Errorf("%q → %d, %v; want %d", in, b, err, want)
		}
	}
	for _, in := range []string{"-1", "x", "1XB", "1e30GiB"} {
		var b ByteSize
		if err := b.parse(in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}

func TestValidHost(t *testing.T) {
	for _, ok := range []string{"docker.io", "registry.internal:5000", "127.0.0.1:5001", "[::1]:5000", "localhost"} {
		if err := ValidHost(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "a b", "host:0", "host:99999", "x/y", "a@b", "-a.io", strings.Repeat("a", 300), "a..b", "::1"} {
		if ValidHost(bad) == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestScanLimits(t *testing.T) {
	cfg, err := Parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	if l := cfg.Gate.ScanLimits; l.MaxLayerSize != 16<<30 || l.MaxLayerFiles != 1_000_000 || l.MaxImageSize != 128<<30 {
		t.Fatalf("zero-config scan limits %+v", l)
	}
	cfg, err = Parse([]byte("gate: {scanLimits: {maxLayerSize: 2GiB, maxLayerFiles: 5000, maxImageSize: 10GiB}}"))
	if err != nil {
		t.Fatal(err)
	}
	if l := cfg.Gate.ScanLimits; l.MaxLayerSize != 2<<30 || l.MaxLayerFiles != 5000 || l.MaxImageSize != 10<<30 {
		t.Fatalf("scan limits %+v", l)
	}
}

func TestDenials(t *testing.T) {
	cfg, err := Parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	if d := cfg.Gate.Denials; d.Keep != 1000 || d.MaxAge != 0 || d.FlushInterval.D() != time.Second {
		t.Fatalf("zero-config denials %+v", d)
	}
	cfg, err = Parse([]byte("gate: {denials: {keep: 50000, maxAge: 720h, flushInterval: 5s}}"))
	if err != nil {
		t.Fatal(err)
	}
	if d := cfg.Gate.Denials; d.Keep != 50000 || d.MaxAge.D() != 720*time.Hour || d.FlushInterval.D() != 5*time.Second {
		t.Fatalf("denials %+v", d)
	}
	for _, tc := range []struct{ yaml, want string }{
		{"gate: {denials: {keep: -1}}", "config: gate.denials.keep: must be between 1 and 100000, not -1"},
		{"gate: {denials: {keep: 100001}}", "config: gate.denials.keep: must be between 1 and 100000"},
		{"gate: {denials: {maxAge: -1h}}", "config: gate.denials.maxAge: must not be negative"},
		{"gate: {denials: {flushInterval: 2m}}", "config: gate.denials.flushInterval: must be between"},
		{"gate: {denials: {flushInterval: -1s}}", "config: gate.denials.flushInterval: must be between"},
		{"gate:\n  denials:\n    keep: many\n", "gate.denials.keep (line 3)"},
	} {
		if _, err := Parse([]byte(tc.yaml)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want %q", tc.yaml, err, tc.want)
		}
	}
}

func TestServerAccessValidation(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "exists")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing")
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"cert without key", "server: {tls: {certFile: " + file + "}}", "server.tls.keyFile: required"},
		{"key without cert", "server: {tls: {keyFile: " + file + "}}", "server.tls.certFile: required"},
		{"client CA without TLS", "server: {tls: {clientCAFile: " + file + "}}", "server.tls.clientCAFile"},
		{"unreadable cert", "server: {tls: {certFile: " + missing + ", keyFile: " + file + "}}", "server.tls.certFile: open " + missing},
		{"unreadable htpasswd", "server: {auth: {htpasswd: " + missing + "}}", "server.auth.htpasswd: open"},
		{"unreadable tokens", "server: {auth: {tokensFile: " + missing + "}}", "server.auth.tokensFile: open"},
		{"unreadable API tokens", "server: {auth: {apiTokenFile: " + missing + "}}", "server.auth.apiTokenFile: open"},
		{"protected metrics without credentials", "server: {auth: {protectMetrics: true}}", "server.auth.protectMetrics"},
		{"unknown field", "server: {auth: {password: x}}", "field password not found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
	cfg, err := Parse([]byte("server: {tls: {certFile: " + file + ", keyFile: " + file + "}, auth: {htpasswd: " + file + ", apiTokenFile: " + file + ", protectMetrics: true}}"))
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Server.TLS.Enabled() || !cfg.Server.Auth.PullAuth() {
		t.Errorf("server %+v", cfg.Server)
	}
	if d := Default(); d.Finish() != nil || d.Server.TLS.Enabled() || d.Server.Auth.PullAuth() {
		t.Errorf("access control is on by default: %+v", d.Server)
	}
}

func TestServerAccessFromEnvironment(t *testing.T) {
	cfg := Default()
	env := map[string]string{"GATEHOUSE_TLS_CERT_FILE": "/c", "GATEHOUSE_TLS_KEY_FILE": "/k", "GATEHOUSE_AUTH_HTPASSWD": "/h",
		"GATEHOUSE_AUTH_TOKENS_FILE": "/t", "GATEHOUSE_AUTH_API_TOKEN_FILE": "/a", "GATEHOUSE_TLS_CLIENT_CA_FILE": "/ca"}
	if err := cfg.applyEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok }); err != nil {
		t.Fatal(err)
	}
	want := Server{TLS: ServerTLS{CertFile: "/c", KeyFile: "/k", ClientCAFile: "/ca"}, Auth: ServerAuth{Htpasswd: "/h", TokensFile: "/t", APITokenFile: "/a"}}
	if cfg.Server.TLS != want.TLS || cfg.Server.Auth != want.Auth {
		t.Errorf("got %+v, want %+v", cfg.Server, want)
	}
}

func TestRedactedHidesUpstreamPasswords(t *testing.T) {
	const secret = "Sup3r-Secret-Upstream-Pw"
	cfg, err := Parse([]byte("upstreams: [{name: r.example, username: robot, password: " + secret + "}]"))
	if err != nil {
		t.Fatal(err)
	}
	out, err := yaml.Marshal(cfg.Redacted())
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), secret) || !strings.Contains(string(out), "<redacted>") || !strings.Contains(string(out), "robot") {
		t.Errorf("redacted config:\n%s", out)
	}
	if cfg.Upstreams[0].Password != secret {
		t.Error("Redacted changed the configuration itself")
	}
}

// Decoding errors name the field, not only the line.
func TestDecodeErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct{ yml, want string }{
		{"cache:\n  maxSize: 12XB\n", "cache.maxSize (line 2): "},
		{"server:\n  idleTimeout: soon\n", "server.idleTimeout (line 2): "},
		{"upstreams:\n  - name: a.example\n    tagTTL: forever\n", "upstreams[0].tagTTL (line 3): "},
		{"upstreams:\n  - name: a.example\n  - name: b.example\n    colour: red\n", "upstreams[1].colour (line 4): field colour not found"},
		{"gate:\n  policy:\n    rules:\n      - name: x\n        allowlist:\n          - id: CVE-1\n            reason: r\n            expires: tomorrow\n",
			"gate.policy.rules[0].allowlist[0].expires (line 8): "},
	} {
		_, err := Parse([]byte(tc.yml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err = %v, want it to contain %q", tc.yml, err, tc.want)
		}
	}
}

// A public key file is read with a bound: a huge file (or a device) named
// by mistake is refused with the field named, not read into memory.
func TestPublicKeyFileBounded(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "big.pem")
	if err := os.WriteFile(big, bytes.Repeat([]byte("A"), maxPublicKeyFile+1), 0o644); err != nil {
		t.Fatal(err)
	}
	small := filepath.Join(dir, "key.pem")
	if err := os.WriteFile(small, []byte("-----BEGIN PUBLIC KEY-----\nx\n-----END PUBLIC KEY-----\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	policy := func(path string) []byte {
		return []byte("gate:\n  policy:\n    rules:\n      - name: signed\n        signatures: {required: true, identities: [{publicKey: " + strconv.Quote(path) + "}]}\n")
	}
	_, err := Parse(policy(big))
	if err == nil || !strings.Contains(err.Error(), "identities[0].publicKey") || !strings.Contains(err.Error(), "larger than 64 KiB") {
		t.Fatalf("a 64 KiB+1 key file: %v; want an error naming identities[0].publicKey", err)
	}
	cfg, err := Parse(policy(small))
	if err != nil {
		t.Fatal(err)
	}
	pem, err := cfg.Gate.Policy.Rules[0].Signatures.Identities[0].PublicKeyPEM()
	if err != nil || !bytes.HasPrefix(pem, []byte("-----BEGIN PUBLIC KEY-----")) {
		t.Fatalf("small key file: %q, %v", pem, err)
	}
}

// vulnerabilities: on is the default spelled out: the rule is the same
// (same hash) as one that does not say it; off with required signatures
// is a rule that does not scan.
func TestVulnerabilitiesOnIsTheDefault(t *testing.T) {
	on, err := Parse([]byte("gate: {policy: {rules: [{name: a, vulnerabilities: on}]}}"))
	if err != nil {
		t.Fatal(err)
	}
	unset, _ := Parse([]byte("gate: {policy: {rules: [{name: a}]}}"))
	if !reflect.DeepEqual(on.Gate.Policy.Rules, unset.Gate.Policy.Rules) || !on.Gate.Policy.Rules[0].Scans() {
		t.Errorf("vulnerabilities: on %+v differs from unset %+v", on.Gate.Policy.Rules, unset.Gate.Policy.Rules)
	}
	off, err := Parse([]byte(`gate: {policy: {rules: [{name: a, vulnerabilities: off, signatures: {required: true, identities: [{publicKey: "-----BEGIN PUBLIC KEY-----\nx\n-----END PUBLIC KEY-----"}]}}]}}`))
	if err != nil || off.Gate.Policy.Rules[0].Scans() {
		t.Errorf("signature-only rule: %v, scans %v", err, off != nil && off.Gate.Policy.Rules[0].Scans())
	}
}
