package e2e

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/gatehouse/gatehouse/gate/scan/scantest"
)

// dbRule is the enforcing rule of TestDBUpdate.
const dbRule = "e2e-no-critical"

// Media types of the Trivy DB OCI artifact (ghcr.io/aquasecurity/trivy-db).
const (
	trivyDBLayerType  types.MediaType = "application/vnd.aquasec.trivy.db.layer.v1.tar+gzip"
	trivyDBConfigType types.MediaType = "application/vnd.aquasec.trivy.config.v1+json"
)

// dbRepo and dbTag are where the tests publish the DB artifact upstream.
const dbRepo, dbTag = "aquasec/trivy-db", "2"

// pushDBArtifact publishes db (a scantest fixture) as a Trivy DB OCI
// artifact, one layer holding its db.tar.gz, to repo:tag of reg.
func pushDBArtifact(t testing.TB, reg *Registry, repo, tag string, db scantest.DB) v1.Hash {
	t.Helper()
	archive, err := db.ArchiveBytes()
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, static.NewLayer(archive, trivyDBLayerType))
	if err != nil {
		t.Fatal(err)
	}
	img = mutate.ConfigMediaType(mutate.MediaType(img, types.OCIManifestSchema1), trivyDBConfigType)
	ref := reg.Repo(t, repo).Tag(tag)
	if err := remote.Write(ref, img, reg.RemoteOptions()...); err != nil {
		t.Fatalf("push DB artifact %s: %v", ref, err)
	}
	dgst, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return dgst
}

// dbVersionOf is gatehouse's name of a DB release (gate/scan dbVersion):
// it ends in the release's UpdatedAt.
func dbVersionOf(db scantest.DB) string { return db.UpdatedAt.UTC().Format(time.RFC3339Nano) }

// verdictDetail is what TestDBUpdate reads of GET /api/v1/images/<digest>.
type verdictDetail struct {
	Digest  string `json:"digest"`
	Verdict *struct {
		Admitted  bool   `json:"admitted"`
		Rule      string `json:"rule"`
		Message   string `json:"message"`
		DBVersion string `json:"dbVersion"`
	} `json:"verdict"`
	Vulns []apiVuln `json:"vulnerabilities"`
}

// TestDBUpdate is issue 3's acceptance test of DB updates: `gatehouse db
// update` downloads the Trivy DB OCI artifact from gate.db.repository
// through the proxy's upstream client; `serve` refreshes on a schedule,
// swaps the DB and re-evaluates cached verdicts from the stored package
// inventory without downloading a layer again: an image admitted under
// the old DB is denied under the new one, which adds a critical CVE.
//
// Gatehouse reaches the upstream through a tripwire that records every
// request, so the test can tell the DB artifact's downloads from layers.
func TestDBUpdate(t *testing.T) {
	requireGatehouse(t)
	reg := StartRegistry(t, RegistryOptions{})
	tw := StartTripwire(t, reg.URL)
	// The upstream as gatehouse knows it is the tripwire: containerd's ns
	// and the host of gate.db.repository name it.
	up := GatehouseUpstream{Name: tw.Host, URL: tw.URL, TagTTL: "1h"}
	ns := "?ns=" + url.QueryEscape(tw.Host)

	v1DB, v2DB := scantest.V1(), scantest.V2()
	t.Logf("fixture DBs: V1 UpdatedAt %s NextUpdate %s; V2 UpdatedAt %s NextUpdate %s",
		v1DB.UpdatedAt, v1DB.NextUpdate, v2DB.UpdatedAt, v2DB.NextUpdate)
	art1 := pushDBArtifact(t, reg, dbRepo, dbTag, v1DB)
	clean := reg.Push(t, "e2e/clean", "v1", scantest.CleanAlpine())
	cleanImg := scantest.CleanAlpine()

	var update, status CmdResult
	gh := StartGatehouse(t, GatehouseConfig{
		Upstreams: []GatehouseUpstream{up},
		Gate: &GateConfig{
			MaxWait: "60s",
			DB:      GateDB{Repository: tw.Host + "/" + dbRepo + ":" + dbTag, UpdateInterval: "2s"},
			Policy: GatePolicy{Rules: []GateRule{{
				Name:  dbRule,
				Mode:  "enforce",
				Block: []string{"CRITICAL"},
			}}},
		},
		// Before serve, which would otherwise fetch the DB itself at start.
		BeforeServe: func(t testing.TB, g *Gatehouse) {
			update = g.Run(t, "db update")
			status = g.Run(t, "db status")
		},
	})

	t.Run("db update", func(t *testing.T) {
		if update.Err != nil {
			t.Fatalf("gatehouse db update: %v", update)
		}
		t.Logf("gatehouse db update:\n%s", update.Output())
		if n := tw.Count(http.MethodGet, "/v2/"+dbRepo+"/manifests/"+dbTag) + tw.Count(http.MethodGet, "/v2/"+dbRepo+"/manifests/"+art1.String()); n == 0 {
			t.Errorf("gatehouse db update did not GET the DB manifest through the upstream; upstream saw:\n  %s", strings.Join(tw.Hits(), "\n  "))
		}
		if status.Err != nil {
			t.Fatalf("gatehouse db status: %v", status)
		}
		out := status.Output()
		for _, want := range []string{"UpdatedAt:    " + v1DB.UpdatedAt.Format(time.RFC3339), dbVersionOf(v1DB)} {
			if !strings.Contains(out, want) {
				t.Errorf("gatehouse db status does not show %q (the V1 DB):\n%s", want, out)
			}
		}
	})
	if t.Failed() {
		t.FailNow()
	}

	var policy struct {
		DBVersion string `json:"dbVersion"`
	}
	gh.API(t, "/api/v1/policy", &policy)
	if !strings.HasSuffix(policy.DBVersion, dbVersionOf(v1DB)) {
		t.Errorf("serve started with DB %q; want the V1 DB that db update imported (%s)", policy.DBVersion, dbVersionOf(v1DB))
	}

	accept := "Accept: application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"
	manifestPath := "/v2/" + clean.Repo + "/manifests/" + clean.Tag + ns
	cfgName, err := cleanImg.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	layers, err := cleanImg.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var layerDigests []string
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		layerDigests = append(layerDigests, d.String())
	}

	var before verdictDetail
	t.Run("admitted under V1", func(t *testing.T) {
		// A pull: the manifest, then its config and layers.
		if resp := gh.Do(t, http.MethodGet, manifestPath, accept); resp.Status != http.StatusOK {
			t.Fatalf("GET %s under V1: %s; want 200", manifestPath, resp)
		}
		for _, d := range append([]string{cfgName.String()}, layerDigests...) {
			p := "/v2/" + clean.Repo + "/blobs/" + d + ns
			if resp := gh.Do(t, http.MethodGet, p); resp.Status != http.StatusOK {
				t.Errorf("GET %s under V1: %s; want 200", p, resp)
			}
		}
		gh.API(t, "/api/v1/images/"+clean.Digest.String(), &before)
		if before.Verdict == nil || !before.Verdict.Admitted || !strings.HasSuffix(before.Verdict.DBVersion, dbVersionOf(v1DB)) {
			t.Fatalf("GET /api/v1/images/%s under V1: verdict %+v; want admitted with DB %s", clean.Digest, before.Verdict, dbVersionOf(v1DB))
		}
	})
	if t.Failed() {
		t.FailNow()
	}

	// From here on, what gatehouse asks upstream is on record: the DB
	// artifact only, never a layer of the cached image.
	tw.Reset()
	art2 := pushDBArtifact(t, reg, dbRepo, dbTag, v2DB)
	t.Logf("published the V2 DB artifact %s (V1 was %s)", art2, art1)

	t.Run("denied under V2", func(t *testing.T) {
		// Behaviour, not timing: a generous deadline for a 2s schedule.
		deadline := time.Now().Add(2 * time.Minute)
		var after verdictDetail
		for {
			after = verdictDetail{}
			gh.API(t, "/api/v1/images/"+clean.Digest.String(), &after)
			if after.Verdict != nil && strings.HasSuffix(after.Verdict.DBVersion, dbVersionOf(v2DB)) {
				break
			}
			if time.Now().After(deadline) {
				gh.API(t, "/api/v1/policy", &policy)
				t.Fatalf("2m after the V2 DB was published, the verdict of %s is still %+v (policy dbVersion %q); upstream saw:\n  %s",
					clean.Digest, after.Verdict, policy.DBVersion, strings.Join(tw.Hits(), "\n  "))
			}
			time.Sleep(250 * time.Millisecond)
		}
		v := after.Verdict
		if v.Admitted || v.Rule != dbRule || !strings.Contains(v.Message, scantest.CVEAlpineMusl) {
			t.Errorf("GET /api/v1/images/%s under V2: verdict %+v; want denied by %q for %s", clean.Digest, v, dbRule, scantest.CVEAlpineMusl)
		}
		// Re-evaluation matches the stored package inventory against the
		// new DB (its time becomes the report's ScannedAt): the log shows
		// the re-evaluation and a single image scan, the one under V1.
		log := gh.Log()
		if !strings.Contains(log, "re-evaluated cached verdicts with the new vulnerability DB") {
			t.Errorf("gatehouse's log does not show the re-evaluation of cached verdicts")
		}
		scans := 0
		for _, line := range strings.Split(log, "\n") {
			if strings.Contains(line, `"msg":"image scanned"`) && strings.Contains(line, clean.Digest.String()) {
				scans++
			}
		}
		if scans != 1 {
			t.Errorf("gatehouse's log shows %d scans of %s; want 1 (under V1; the V2 verdict is a re-evaluation)", scans, clean.Digest)
		}
		found := false
		for _, vu := range after.Vulns {
			if vu.ID == scantest.CVEAlpineMusl && vu.Severity == "CRITICAL" && vu.PkgName == "musl" {
				found = true
			}
		}
		if !found {
			t.Errorf("GET /api/v1/images/%s under V2 lacks %s (CRITICAL, musl): %+v", clean.Digest, scantest.CVEAlpineMusl, after.Vulns)
		}

		get := gh.Do(t, http.MethodGet, manifestPath, accept)
		errs := get.OCIErrors()
		if get.Status != http.StatusForbidden || len(errs) == 0 || errs[0].Code != "DENIED" {
			t.Errorf("GET %s under V2: %s; want 403 DENIED", manifestPath, get)
		} else if !strings.Contains(errs[0].Message, scantest.CVEAlpineMusl) || !strings.Contains(errs[0].Message, dbRule) {
			t.Errorf("GET %s under V2: message %q does not name %s and rule %q", manifestPath, errs[0].Message, scantest.CVEAlpineMusl, dbRule)
		}
		p := "/v2/" + clean.Repo + "/blobs/" + layerDigests[0] + ns
		if resp := gh.Do(t, http.MethodGet, p); resp.Status != http.StatusForbidden {
			t.Errorf("GET %s (layer of the now denied image) under V2: %s; want 403", p, resp)
		}

		var denials struct {
			Denials []struct {
				Digest  string `json:"digest"`
				Rule    string `json:"rule"`
				Message string `json:"message"`
			} `json:"denials"`
		}
		gh.API(t, "/api/v1/denials", &denials)
		found = false
		for _, d := range denials.Denials {
			if d.Digest == clean.Digest.String() && d.Rule == dbRule && strings.Contains(d.Message, scantest.CVEAlpineMusl) {
				found = true
			}
		}
		if !found {
			t.Errorf("GET /api/v1/denials lists no refusal of %s for %s: %+v", clean.Digest, scantest.CVEAlpineMusl, denials.Denials)
		}
	})

	t.Run("no layer downloaded again", func(t *testing.T) {
		hits := tw.Hits()
		t.Logf("upstream requests since the V1 verdict:\n  %s", strings.Join(hits, "\n  "))
		for _, d := range append([]string{cfgName.String()}, layerDigests...) {
			if n := tw.Count(http.MethodGet, "/blobs/"+d); n > 0 {
				t.Errorf("gatehouse downloaded blob %s of the cached image %d time(s) again after the DB update", d, n)
			}
		}
		// The V2 artifact did come through the upstream client.
		if tw.Count(http.MethodGet, "/v2/"+dbRepo+"/manifests/"+dbTag) == 0 {
			t.Errorf("serve did not GET the DB manifest %s:%s through the upstream", dbRepo, dbTag)
		}
		dbBlobs := 0
		for _, h := range hits {
			if strings.HasPrefix(h, "GET /v2/"+dbRepo+"/blobs/") {
				dbBlobs++
			}
		}
		if dbBlobs == 0 {
			t.Errorf("serve did not GET the DB layer blob through the upstream")
		}
	})
}
