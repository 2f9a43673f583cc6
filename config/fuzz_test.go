package config

import (
	"bytes"
	"errors"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// configSeeds are the shapes an operator writes; the fuzzer mutates them.
var configSeeds = []string{
	"",
	"listen: 127.0.0.1:5000\ndataDir: /var/lib/gatehouse\nlog: {format: json, level: debug}\n",
	"cache: {maxSize: 20GiB, accessFlushInterval: 1m}\nserver: {readHeaderTimeout: 5s, idleTimeout: 0s}\n",
	"upstreams:\n- {name: registry.internal:5000, url: http://registry.internal:5000, tagTTL: 0s, retries: 3}\ndefaultUpstream: registry.internal:5000\n",
	"upstreams:\n- name: docker.io\n  url: https://registry-1.docker.io\n  aliases: [index.docker.io]\n  username: u\n  password: p\n",
	"upstreams: []\n", "defaultUpstream: nowhere.example\n", "cache: {maxSize: -1}\n", "listen: 5000\n",
	"upstreams:\n- {name: a.io}\n- {name: A.IO}\n", "upstreams:\n- {name: a.io, url: ftp://a.io/x?y}\n",
	"gate:\n  maxWait: 5s\n  blobs: any\n  scanConcurrency: 4\n  db: {repository: ghcr.io/aquasecurity/trivy-db:2, updateInterval: 0s}\n",
	"gate:\n  policy:\n    rules:\n    - {name: lib, upstreams: [docker.io], repositories: [\"library/*\"], block: [critical, HIGH], mode: audit}\n    - {name: org, repositories: [\"myorg/**\"], ignoreUnfixed: true, allowlist: [{id: CVE-2024-1, reason: no exploit, expires: 2030-01-31}]}\n    - {name: default}\n",
	"gate:\n  policy:\n    rules:\n    - {name: x}\n    - {name: x, mode: maybe, block: [SEVERE], repositories: [\"[\"]}\n",
	"gate:\n  policy:\n    rules:\n    - {name: s, repositories: [a], signatures: {required: true, identities: [{issuer: i, subject: s}]}}\n",
	"gate: {maxWait: forever}\n", "cache: {maxSize: 12 parsecs}\n", "unknownField: 1\n", "listen: [\n",
}

// fieldErr is how a validation error names its field: "config: gate.policy.rules[0].name: ...".
// Decoding errors add the line: "config: cache.maxSize (line 2): ...".
var fieldErr = regexp.MustCompile(`^config: [a-zA-Z][a-zA-Z0-9]*(\[\d+\])?(\.[a-zA-Z][a-zA-Z0-9]*(\[\d+\])?)*( \(line \d+\))?: `)

func FuzzParse(f *testing.F) {
	for _, s := range configSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse(data)
		if err != nil {
			checkConfigError(t, data, err)
			return
		}
		checkValid(t, cfg)
		// A valid configuration written back as YAML reads as itself: what
		// `gatehouse config` prints is what gatehouse runs with.
		out, merr := yaml.Marshal(cfg)
		if merr != nil {
			t.Fatalf("marshal of a valid config: %v", merr)
		}
		again, err := Parse(out)
		if err != nil {
			t.Fatalf("a valid config written as YAML does not parse:\n%s\n%v", out, err)
		}
		// Compared as YAML: an empty list and a missing one mean the same.
		if out2, _ := yaml.Marshal(again); !bytes.Equal(out, out2) {
			t.Fatalf("round trip changed the config:\n%s\nread back as:\n%s", out, out2)
		}
	})
}

// checkConfigError: a refused configuration says where the problem is,
// either the field path or the YAML line.
func checkConfigError(t *testing.T, data []byte, err error) {
	t.Helper()
	leaves := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		leaves = j.Unwrap()
	}
	for _, e := range leaves {
		msg := e.Error()
		if !fieldErr.MatchString(msg) && !strings.HasPrefix(msg, "yaml: ") && !strings.HasPrefix(msg, "line ") {
			t.Fatalf("config error names neither a field nor a line: %q (input %q)", msg, data)
		}
	}
	if errors.Unwrap(err) == nil && len(leaves) == 0 {
		t.Fatal("empty error")
	}
}

func checkValid(t *testing.T, cfg *Config) {
	t.Helper()
	if len(cfg.Upstreams) == 0 || (cfg.DefaultUpstream != "" && cfg.Upstream(cfg.DefaultUpstream) == nil) {
		t.Fatalf("valid config without a usable upstream: %+v", cfg)
	}
	for _, u := range cfg.Upstreams {
		if ValidHost(u.Name) != nil {
			t.Fatalf("upstream name %q accepted", u.Name)
		}
		pu, err := url.Parse(u.URL)
		if err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" || pu.Path != "" || pu.User != nil {
			t.Fatalf("upstream url %q accepted", u.URL)
		}
		if u.TagTTL == nil || *u.TagTTL < 0 || u.Retries == nil || *u.Retries < 0 {
			t.Fatalf("upstream defaults missing: %+v", u)
		}
	}
	rules := cfg.Gate.Policy.Rules
	if len(rules) == 0 {
		t.Fatal("no policy rule")
	}
	for i, r := range rules {
		if r.Name == "" || (r.Mode != ModeEnforce && r.Mode != ModeAudit && r.Mode != ModeOff) {
			t.Fatalf("rule %d accepted: %+v", i, r)
		}
		for _, s := range r.Block {
			if !validSeverity(s) {
				t.Fatalf("rule %d blocks unknown severity %q", i, s)
			}
		}
		if len(r.Upstreams) == 0 && len(r.Repositories) == 0 && i != len(rules)-1 {
			t.Fatalf("default rule %d is not last", i)
		}
	}
}
