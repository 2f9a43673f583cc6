package sign_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse/gatehouse/gate/sign"
)

func TestNormalizePredicateType(t *testing.T) {
	cases := map[string]string{
		"slsaprovenance":                   sign.PredicateSLSAProvenanceV02,
		"slsaprovenance02":                 sign.PredicateSLSAProvenanceV02,
		"slsaprovenance1":                  sign.PredicateSLSAProvenanceV1,
		"spdx":                             sign.PredicateSPDX,
		"spdxjson":                         sign.PredicateSPDX,
		"cyclonedx":                        sign.PredicateCycloneDX,
		"vuln":                             sign.PredicateVuln,
		"openvex":                          sign.PredicateOpenVEX,
		sign.PredicateOpenVEX:              sign.PredicateOpenVEX,
		"https://openvex.dev/ns/v0.2.0":    sign.PredicateOpenVEX,
		"https://spdx.dev/Document/v2.3":   sign.PredicateSPDX,
		"https://cyclonedx.org/bom/v1.5":   sign.PredicateCycloneDX,
		sign.PredicateSLSAProvenanceV1:     sign.PredicateSLSAProvenanceV1,
		sign.PredicateSLSAProvenanceV02:    sign.PredicateSLSAProvenanceV02,
		"https://slsa.dev/provenance/v0.1": "https://slsa.dev/provenance/v0.1", // another format, kept apart
		"https://openvex.dev/nsx/v0.2.0":   "https://openvex.dev/nsx/v0.2.0",
		"https://evil.test/ns/v0.2.0":      "https://evil.test/ns/v0.2.0",
		"https://openvex.dev/ns/v0.2.0/x":  "https://openvex.dev/ns/v0.2.0/x",
		"SPDX":                             "SPDX", // cosign's names are lower case
		"":                                 "",
		sign.CosignSignPredicate:           sign.CosignSignPredicate,
	}
	for in, want := range cases {
		if got := sign.NormalizePredicateType(in); got != want {
			t.Errorf("NormalizePredicateType(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseProvenance(t *testing.T) {
	const v02 = `{
		"builder": {"id": "https://github.com/slsa-framework/slsa-github-generator/.github/workflows/generator_container_slsa3.yml@refs/tags/v2.0.0"},
		"buildType": "https://github.com/slsa-framework/slsa-github-generator/container@v1",
		"invocation": {
			"configSource": {"uri": "git+https://github.com/example/app@refs/heads/main", "digest": {"sha1": "abc"}, "entryPoint": ".github/workflows/release.yml"},
			"parameters": {},
			"environment": {"github_actor": "octocat"}
		},
		"metadata": {"buildStartedOn": "2025-01-01T00:00:00Z", "completeness": {"parameters": true}},
		"materials": [
			{"uri": "git+https://github.com/example/app@refs/heads/main", "digest": {"sha1": "abc"}},
			{"uri": "pkg:docker/golang@1.26", "digest": {"sha256": "def"}}
		],
		"x-extension": {"added by": "a builder"}
	}`
	const v1 = `{
		"buildDefinition": {
			"buildType": "https://actions.github.io/buildtypes/workflow/v1",
			"externalParameters": {
				"workflow": {"ref": "refs/heads/main", "repository": "https://github.com/example/app", "path": ".github/workflows/release.yml"},
				"source": {"uri": "git+https://github.com/example/app@refs/heads/main"}
			},
			"resolvedDependencies": [
				{"uri": "git+https://github.com/example/app@refs/heads/main", "digest": {"gitCommit": "abc"}},
				{"uri": "https://github.com/example/app"}
			]
		},
		"runDetails": {"builder": {"id": "https://github.com/actions/runner/github-hosted"}, "metadata": {"invocationId": "1"}}
	}`
	cases := []struct {
		name, predicateType, predicate string
		builder                        string
		repos                          []string
		err                            string // substring; "" for none
	}{
		{
			name: "v0.2", predicateType: sign.PredicateSLSAProvenanceV02, predicate: v02,
			builder: "https://github.com/slsa-framework/slsa-github-generator/.github/workflows/generator_container_slsa3.yml@refs/tags/v2.0.0",
			repos:   []string{"git+https://github.com/example/app@refs/heads/main"},
		},
		{
			// A material is any dependency: a build of anything can list
			// the trusted organisation's repository among them.
			name: "v0.2 materials are not the source", predicateType: sign.PredicateSLSAProvenanceV02,
			predicate: `{"builder":{"id":"b"},"invocation":{"configSource":{"uri":"git+https://github.com/evil/app"}},"materials":[{"uri":"git+https://github.com/our-org/lib"}]}`,
			builder:   "b", repos: []string{"git+https://github.com/evil/app"},
		},
		{
			name: "v0.2 without configSource: the first material", predicateType: sign.PredicateSLSAProvenanceV02,
			predicate: `{"builder":{"id":"b"},"materials":[{"uri":"git+https://git.example/app"},{"uri":"git+https://github.com/our-org/lib"}]}`,
			builder:   "b", repos: []string{"git+https://git.example/app"},
		},
		{
			name: "v1 dependencies are not the source", predicateType: sign.PredicateSLSAProvenanceV1,
			predicate: `{"buildDefinition":{"externalParameters":{"source":"git+https://github.com/evil/app"},"resolvedDependencies":[{"uri":"git+https://github.com/our-org/lib"}]},"runDetails":{"builder":{"id":"b"}}}`,
			builder:   "b", repos: []string{"git+https://github.com/evil/app"},
		},
		{
			name: "v0.2 by cosign's short name", predicateType: "slsaprovenance", predicate: `{"builder":{"id":"b"}}`,
			builder: "b",
		},
		{
			name: "v1", predicateType: sign.PredicateSLSAProvenanceV1, predicate: v1,
			builder: "https://github.com/actions/runner/github-hosted",
			repos:   []string{"https://github.com/example/app", "git+https://github.com/example/app@refs/heads/main"},
		},
		{
			name: "v1, source as a string", predicateType: sign.PredicateSLSAProvenanceV1,
			predicate: `{"buildDefinition":{"externalParameters":{"source":"git+https://git.example/app"}},"runDetails":{"builder":{"id":"b"}}}`,
			builder:   "b", repos: []string{"git+https://git.example/app"},
		},
		{
			name: "v1, odd external parameters are not sources", predicateType: sign.PredicateSLSAProvenanceV1,
			predicate: `{"buildDefinition":{"externalParameters":{"workflow":"x","source":7}},"runDetails":{"builder":{"id":"b"}}}`,
			builder:   "b",
		},
		{name: "v0.2 read as v1", predicateType: sign.PredicateSLSAProvenanceV1, predicate: v02, err: "no builder id"},
		{name: "v1 read as v0.2", predicateType: sign.PredicateSLSAProvenanceV02, predicate: v1, err: "no builder id"},
		{name: "no builder", predicateType: sign.PredicateSLSAProvenanceV1, predicate: `{"runDetails":{}}`, err: "no builder id"},
		{name: "not provenance", predicateType: sign.PredicateSPDX, predicate: v1, err: "not SLSA provenance"},
		{name: "not JSON", predicateType: sign.PredicateSLSAProvenanceV1, predicate: `{"runDetails":`, err: "SLSA provenance v1"},
		{name: "not an object", predicateType: sign.PredicateSLSAProvenanceV02, predicate: `"builder"`, err: "SLSA provenance v0.2"},
		{
			name: "two builders", predicateType: sign.PredicateSLSAProvenanceV02,
			predicate: `{"builder":{"id":"https://trusted.test"},"builder":{"id":"https://evil.test"}}`, err: "duplicate",
		},
		{
			name: "two builders, other spelling", predicateType: sign.PredicateSLSAProvenanceV1,
			predicate: `{"runDetails":{"builder":{"id":"https://trusted.test"}},"run_details":{"builder":{"id":"https://evil.test"}}}`, err: "duplicate",
		},
		{
			name: "a builder id that is not a string", predicateType: sign.PredicateSLSAProvenanceV1,
			predicate: `{"runDetails":{"builder":{"id":["https://trusted.test"]}}}`, err: "SLSA provenance v1",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			builder, repos, err := sign.ParseProvenance(tc.predicateType, []byte(tc.predicate))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ParseProvenance = %q, %q, %v; want an error with %q", builder, repos, err, tc.err)
				}
				return
			}
			if err != nil || builder != tc.builder || !slices.Equal(repos, tc.repos) {
				t.Fatalf("ParseProvenance = %q, %q, %v; want %q, %q", builder, repos, err, tc.builder, tc.repos)
			}
		})
	}
}

func TestScanTime(t *testing.T) {
	finished := time.Date(2025, 6, 1, 12, 30, 0, 0, time.UTC)
	started := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		name, predicate string
		want            time.Time
		err             string
	}{
		{name: "finished", predicate: `{"metadata":{"scanStartedOn":"2025-06-01T12:00:00Z","scanFinishedOn":"2025-06-01T12:30:00Z"}}`, want: finished},
		{name: "only started", predicate: `{"metadata":{"scanStartedOn":"2025-06-01T12:00:00Z"}}`, want: started},
		{name: "finished unset, as cosign writes it", predicate: `{"metadata":{"scanStartedOn":"2025-06-01T12:00:00Z","scanFinishedOn":"0001-01-01T00:00:00Z"}}`, want: started},
		{name: "fractions and offsets", predicate: `{"metadata":{"scanFinishedOn":"2025-06-01T14:30:00.5+02:00"}}`, want: finished.Add(500 * time.Millisecond)},
		{name: "a whole cosign predicate", predicate: `{"invocation":{"parameters":null,"uri":"","event_id":"","builder.id":""},"scanner":{"uri":"pkg:github/aquasecurity/trivy@0.74.0","version":"0.74.0","db":{"uri":"","version":""},"result":{"Results":[]}},"metadata":{"scanStartedOn":"2025-06-01T12:00:00Z","scanFinishedOn":"2025-06-01T12:30:00Z"}}`, want: finished},
		{name: "neither", predicate: `{"metadata":{}}`, err: "no metadata"},
		{name: "both unset", predicate: `{"metadata":{"scanStartedOn":"0001-01-01T00:00:00Z","scanFinishedOn":"0001-01-01T00:00:00Z"}}`, err: "no metadata"},
		{name: "no metadata", predicate: `{}`, err: "no metadata"},
		{name: "not a time", predicate: `{"metadata":{"scanFinishedOn":"yesterday"}}`, err: "scanFinishedOn"},
		{name: "not a string", predicate: `{"metadata":{"scanFinishedOn":1748779200}}`, err: "vulnerability scan predicate"},
		{name: "two finish times", predicate: `{"metadata":{"scanFinishedOn":"2025-06-01T12:30:00Z","scanFinishedOn":"2099-01-01T00:00:00Z"}}`, err: "duplicate"},
		{name: "other case", predicate: `{"metadata":{"ScanFinishedOn":"2099-01-01T00:00:00Z","scanStartedOn":"2025-06-01T12:00:00Z"}}`, want: started},
		{name: "not JSON", predicate: `{"metadata":`, err: "vulnerability scan predicate"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := sign.ScanTime([]byte(tc.predicate))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ScanTime = %v, %v; want an error with %q", got, err, tc.err)
				}
				return
			}
			if err != nil || !got.Equal(tc.want) {
				t.Fatalf("ScanTime = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

// FuzzParseProvenance: signed predicates come from outside; no input
// panics, and a builder id always comes back when there is no error.
func FuzzParseProvenance(f *testing.F) {
	f.Add(sign.PredicateSLSAProvenanceV02, []byte(`{"builder":{"id":"b"},"materials":[{"uri":"u"}]}`))
	f.Add(sign.PredicateSLSAProvenanceV1, []byte(`{"buildDefinition":{"externalParameters":{"source":{"uri":"u"}}},"runDetails":{"builder":{"id":"b"}}}`))
	f.Fuzz(func(t *testing.T, predicateType string, predicate []byte) {
		builder, _, err := sign.ParseProvenance(predicateType, predicate)
		if err == nil && builder == "" {
			t.Fatal("no error and no builder id")
		}
	})
}

// FuzzScanTime: no input panics, and a time always comes back when there
// is no error.
func FuzzScanTime(f *testing.F) {
	f.Add([]byte(`{"metadata":{"scanFinishedOn":"2025-06-01T12:30:00Z"}}`))
	f.Fuzz(func(t *testing.T, predicate []byte) {
		ts, err := sign.ScanTime(predicate)
		if err == nil && ts.IsZero() {
			t.Fatal("no error and no time")
		}
	})
}
