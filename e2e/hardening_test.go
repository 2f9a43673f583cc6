package e2e

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/gatehouse/gatehouse/gate/scan/scantest"
)

// TestGateByContent is the attacker's side of the gate: someone who can push
// anything upstream relabels a vulnerable image as an SBOM, and lists a
// denied image's layers in an "artifact" of their own. The gate judges
// what containerd would run, not the labels, and deny wins over any
// artifact that lists a denied image's blobs. Genuine artifacts (an SBOM, a
// Helm chart) still pass; cosign signatures are covered by TestSignature.
func TestGateByContent(t *testing.T) {
	requireGatehouse(t)
	reg := StartRegistry(t, RegistryOptions{})
	vuln := scantest.VulnerableDebian()
	orig := reg.Push(t, "e2e/vulnerable", "v1", vuln)

	// The same image as an OCI manifest with OCI layer media types and one
	// added field: "artifactType": "application/spdx+json".
	labelled := reg.putRaw(t, "e2e/labelled", "v1", vuln, func(m map[string]any) {
		m["mediaType"] = string(types.OCIManifestSchema1)
		m["artifactType"] = "application/spdx+json"
		m["config"].(map[string]any)["mediaType"] = string(types.OCIConfigJSON)
		for _, l := range m["layers"].([]any) {
			l.(map[string]any)["mediaType"] = string(types.OCILayer)
		}
	})
	// An "SBOM" whose layers are the vulnerable image's layers.
	empty := static.NewLayer([]byte("{}"), types.OCIConfigJSON)
	emptyDigest, _ := empty.Digest()
	if err := remote.WriteLayer(reg.Repo(t, "e2e/evil-sbom"), empty, reg.RemoteOptions()...); err != nil {
		t.Fatal(err)
	}
	evil := reg.putRaw(t, "e2e/evil-sbom", "v1", vuln, func(m map[string]any) {
		m["mediaType"] = string(types.OCIManifestSchema1)
		m["artifactType"] = "application/spdx+json"
		m["config"] = map[string]any{"mediaType": "application/vnd.oci.empty.v1+json", "digest": emptyDigest.String(), "size": 2}
		for _, l := range m["layers"].([]any) {
			l.(map[string]any)["mediaType"] = "application/spdx+json"
		}
	})
	sbom := reg.pushArtifact(t, "e2e/sbom", "application/spdx+json", "application/vnd.oci.empty.v1+json", []byte("{}"),
		"application/spdx+json", []byte(`{"spdxVersion":"SPDX-2.3","name":"app"}`))
	chart := reg.pushArtifact(t, "e2e/chart", "", "application/vnd.cncf.helm.config.v1+json", []byte(`{"name":"app","version":"1.0.0"}`),
		"application/vnd.cncf.helm.chart.content.v1.tar+gzip", []byte("\x1f\x8b\x08\x00chart bytes"))

	gh := StartGatehouse(t, GatehouseConfig{
		Upstreams: []GatehouseUpstream{reg.Upstream()},
		Gate: &GateConfig{
			DB:     GateDB{UpdateInterval: "0s"},
			Policy: GatePolicy{Rules: []GateRule{{Name: gateRule, Block: []string{"CRITICAL", "HIGH"}}}},
		},
		DBArchive: writeTestDB(t),
	})
	ns := "?ns=" + url.QueryEscape(reg.Host)
	ctrd := StartContainerd(t)
	ctrd.SetHosts(t, reg.Host, Hosts{Server: gh.URL})

	t.Run("relabelled image refused", func(t *testing.T) {
		res := ctrd.Pull(t, labelled.Ref(reg.Host), PullOptions{})
		if res.Err == nil {
			t.Fatalf("ctr pulled %s, a vulnerable image labelled artifactType application/spdx+json", labelled.Ref(reg.Host))
		}
		t.Logf("ctr error line: %s", res.LastLine())
		for _, want := range []string{scantest.CVEDebianOpenSSL, gateRule, "403"} {
			if !strings.Contains(res.Output(), want) {
				t.Errorf("ctr's output does not show %q:\n%s", want, res.Output())
			}
		}
	})

	layers := reg.Content(t, orig.Repo, orig.Digest, nil)
	t.Run("artifact listing denied layers", func(t *testing.T) {
		accept := "Accept: " + string(types.OCIManifestSchema1)
		// The original image, judged where it was published.
		if head := gh.Do(t, http.MethodHead, "/v2/"+orig.Repo+"/manifests/"+orig.Tag+ns); head.Status != http.StatusForbidden {
			t.Fatalf("HEAD the vulnerable image: %s; want 403", head)
		}
		if get := gh.Do(t, http.MethodGet, "/v2/"+evil.Repo+"/manifests/"+evil.Tag+ns, accept); get.Status != http.StatusOK {
			t.Fatalf("GET the artifact manifest: %s; want 200 (an SBOM-looking artifact passes, unscanned)", get)
		}
		n := 0
		for d, o := range layers {
			if !strings.HasPrefix(o.Kind, "layer") {
				continue
			}
			n++
			for _, repo := range []string{evil.Repo, labelled.Repo, orig.Repo, "e2e/sbom"} {
				get := gh.Do(t, http.MethodGet, "/v2/"+repo+"/blobs/"+d+ns)
				if get.Status != http.StatusForbidden || len(get.OCIErrors()) == 0 || get.OCIErrors()[0].Code != "DENIED" {
					t.Errorf("GET layer %s of the denied image through %s: %s; want 403 DENIED", d, repo, get)
				}
			}
		}
		if n == 0 {
			t.Fatal("the vulnerable image has no layer")
		}
	})

	for _, a := range []artifact{sbom, chart} {
		t.Run("genuine "+a.Repo, func(t *testing.T) {
			get := gh.Do(t, http.MethodGet, "/v2/"+a.Repo+"/manifests/"+a.Tag+ns, "Accept: "+string(types.OCIManifestSchema1))
			if get.Status != http.StatusOK || !bytes.Equal(get.Body, a.manifest) {
				t.Fatalf("GET the %s manifest: %s; want 200 with the upstream's bytes", a.Repo, get)
			}
			for d, want := range a.blobs {
				get := gh.Do(t, http.MethodGet, "/v2/"+a.Repo+"/blobs/"+d+ns)
				if get.Status != http.StatusOK || !bytes.Equal(get.Body, want) {
					t.Errorf("GET blob %s of %s: %s; want 200 with its %d bytes", d, a.Repo, get, len(want))
				}
			}
		})
	}
}

// putRaw pushes img's blobs to repo and then its manifest, rewritten by
// edit, as repo:tag.
func (r *Registry) putRaw(t *testing.T, repo, tag string, img v1.Image, edit func(map[string]any)) Pushed {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r.Repo(t, repo).Digest(d.String()), img, r.RemoteOptions()...); err != nil {
		t.Fatalf("push the blobs of %s: %v", repo, err)
	}
	raw, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	raw, _ = json.Marshal(m)
	ref := r.Repo(t, repo).Tag(tag)
	if err := remote.Put(ref, rawManifest{raw: raw, mediaType: types.MediaType(m["mediaType"].(string))}, r.RemoteOptions()...); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	dgst, _, _ := v1.SHA256(bytes.NewReader(raw))
	return Pushed{Repo: repo, Tag: tag, Digest: dgst}
}

// artifact is a pushed OCI artifact with its manifest and blobs.
type artifact struct {
	Pushed
	manifest []byte
	blobs    map[string][]byte
}

// pushArtifact pushes an OCI artifact manifest (artifactType, one config,
// one layer) to repo:v1.
func (r *Registry) pushArtifact(t *testing.T, repo, artifactType, configType string, config []byte, layerType string, layer []byte) artifact {
	t.Helper()
	a := artifact{Pushed: Pushed{Repo: repo, Tag: "v1"}, blobs: map[string][]byte{}}
	desc := func(mt string, b []byte) map[string]any {
		l := static.NewLayer(b, types.MediaType(mt))
		if err := remote.WriteLayer(r.Repo(t, repo), l, r.RemoteOptions()...); err != nil {
			t.Fatalf("push a blob to %s: %v", repo, err)
		}
		d, _ := l.Digest()
		a.blobs[d.String()] = b
		return map[string]any{"mediaType": mt, "digest": d.String(), "size": len(b)}
	}
	m := map[string]any{"schemaVersion": 2, "mediaType": string(types.OCIManifestSchema1),
		"config": desc(configType, config), "layers": []any{desc(layerType, layer)}}
	if artifactType != "" {
		m["artifactType"] = artifactType
	}
	a.manifest, _ = json.Marshal(m)
	ref := r.Repo(t, repo).Tag(a.Tag)
	if err := remote.Put(ref, rawManifest{raw: a.manifest, mediaType: types.OCIManifestSchema1}, r.RemoteOptions()...); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	a.Digest, _, _ = v1.SHA256(bytes.NewReader(a.manifest))
	return a
}

// TestSignatureRulesAcrossDBUpdate: one image (one digest) in two
// repositories whose rules trust different keys, signed with the first
// rule's key in both. Each repository keeps its own verdict, before and
// after a vulnerability DB update re-evaluates what is on record: a
// signature result is never carried from one rule to the other.
func TestSignatureRulesAcrossDBUpdate(t *testing.T) {
	requireGatehouse(t)
	reg := StartRegistry(t, RegistryOptions{})
	pushDBArtifact(t, reg, dbRepo, dbTag, scantest.V1())
	keyA, keyB := newCosignKey(t), newCosignKey(t)
	img := BuildImage(t, SmallImage(7)) // no OS packages: clean under both DBs
	inA, inB := reg.Push(t, "team-a/app", "v1", img), reg.Push(t, "team-b/app", "v1", img)
	if inA.Digest != inB.Digest {
		t.Fatal("the two repositories hold different digests")
	}
	signLegacy(t, reg, inA, keyA)
	signLegacy(t, reg, inB, keyA)
	dir := t.TempDir()
	pubA, pubB := filepath.Join(dir, "a.pub"), filepath.Join(dir, "b.pub")
	os.WriteFile(pubA, keyA.pubPEM, 0o644)
	os.WriteFile(pubB, keyB.pubPEM, 0o644)
	rule := func(name, repos, key string) GateRule {
		return GateRule{Name: name, Repositories: []string{repos}, Block: []string{"CRITICAL"},
			Signatures: &GateSignatures{Required: true, Identities: []GateSigner{{PublicKey: key}}}}
	}
	gh := StartGatehouse(t, GatehouseConfig{
		Upstreams: []GatehouseUpstream{reg.Upstream()},
		Gate: &GateConfig{
			DB: GateDB{Repository: reg.Host + "/" + dbRepo + ":" + dbTag, UpdateInterval: "2s"},
			Policy: GatePolicy{Rules: []GateRule{rule("team-a", "team-a/**", pubA), rule("team-b", "team-b/**", pubB),
				{Name: "default", Mode: "off"}}},
		},
		BeforeServe: func(t testing.TB, g *Gatehouse) {
			if res := g.Run(t, "db update"); res.Err != nil {
				t.Fatalf("gatehouse db update: %v", res)
			}
		},
	})
	ns := "?ns=" + url.QueryEscape(reg.Host)
	layer := ""
	for d, o := range reg.Content(t, inA.Repo, inA.Digest, nil) {
		if strings.HasPrefix(o.Kind, "layer") {
			layer = d
		}
	}
	check := func(t *testing.T, when string) {
		t.Helper()
		for _, c := range []struct {
			p    Pushed
			want int
		}{{inA, http.StatusOK}, {inB, http.StatusForbidden}} {
			head := gh.Do(t, http.MethodHead, "/v2/"+c.p.Repo+"/manifests/"+c.p.Tag+ns)
			if head.Status != c.want {
				t.Errorf("%s: HEAD %s: %s; want %d", when, c.p.Repo, head, c.want)
			}
			if get := gh.Do(t, http.MethodGet, "/v2/"+c.p.Repo+"/blobs/"+layer+ns); get.Status != c.want {
				t.Errorf("%s: GET a layer through %s: %s; want %d", when, c.p.Repo, get, c.want)
			}
		}
		b := gh.Do(t, http.MethodGet, "/v2/"+inB.Repo+"/manifests/"+inB.Tag+ns, "Accept: "+string(types.DockerManifestSchema2)+", "+string(types.OCIManifestSchema1))
		if errs := b.OCIErrors(); len(errs) == 0 || !strings.Contains(errs[0].Message, `denied by rule "team-b": signature required: `+reasonUntrusted) {
			t.Errorf("%s: GET %s: %s; want the untrusted signer named", when, inB.Repo, b)
		}
	}
	check(t, "under V1")

	v2 := scantest.V2()
	pushDBArtifact(t, reg, dbRepo, dbTag, v2)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		var d verdictDetail
		gh.API(t, "/api/v1/images/"+inA.Digest.String(), &d)
		if d.Verdict != nil && strings.HasSuffix(d.Verdict.DBVersion, dbVersionOf(v2)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("2m after the V2 DB was published, the verdict on record is still %+v", d.Verdict)
		}
		time.Sleep(250 * time.Millisecond)
	}
	check(t, "after the DB update")
}
