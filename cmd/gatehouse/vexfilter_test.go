package main

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/gate"
)

const openVEX = `{"@context": "https://openvex.dev/ns/v0.2.0", "@id": "https://example.com/vex/1", "author": "vendor",
 "timestamp": "2026-11-01T00:00:00Z", "version": 1,
 "statements": [{"vulnerability": {"name": "CVE-2026-0001"}, "products": [{"@id": "pkg:apk/alpine/libcrypto3@3.5.0-r0"}],
  "status": "not_affected", "justification": "vulnerable_code_not_in_execute_path"}]}`

// A rule's VEX file suppresses the CVE for the package it names, with the
// file as the source; a file that is no VEX document stops start-up with
// the rule's field.
func TestVEXFilterFiles(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "vex.json")
	os.WriteFile(good, []byte(openVEX), 0o600)
	cfg, err := config.Parse([]byte("gate: {policy: {rules: [{name: vendor, vex: {files: [" + good + "]}}]}}"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := newVEXFilter(cfg, slog.New(slog.DiscardHandler))
	if err != nil || f == nil {
		t.Fatalf("newVEXFilter: %v", err)
	}
	vulns := []gate.Vuln{
		{ID: "CVE-2026-0001", PkgName: "libcrypto3", PURL: "pkg:apk/alpine/libcrypto3@3.5.0-r0?arch=x86_64&distro=3.22.1", Severity: "CRITICAL"},
		{ID: "CVE-2026-0001", PkgName: "libssl3", PURL: "pkg:apk/alpine/libssl3@3.5.0-r0?arch=x86_64&distro=3.22.1", Severity: "CRITICAL"},
	}
	img := gate.VEXImage{Upstream: "docker.io", Repo: "library/alpine", Digest: v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("a", 64)}}
	kept, supp := f.Apply("vendor", img, vulns, nil)
	if len(kept) != 1 || kept[0].PkgName != "libssl3" || len(supp) != 1 || supp[0].Source != "file "+good || supp[0].Status != "not_affected" {
		t.Fatalf("kept %+v, suppressed %+v", kept, supp)
	}
	if kept, _ := f.Apply("other-rule", img, vulns, nil); len(kept) != 2 {
		t.Fatalf("another rule's VEX applied: %+v", kept)
	}

	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte(`{"not": "vex"}`), 0o600)
	cfg, err = config.Parse([]byte("gate: {policy: {rules: [{name: a, repositories: [y/*]}, {name: vendor, repositories: [x/*], vex: {files: [" + bad + "]}}]}}"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := newVEXFilter(cfg, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "gate.policy.rules[1].vex.files: "+bad) {
		t.Fatalf("a file that is no VEX: %v", err)
	}
}
