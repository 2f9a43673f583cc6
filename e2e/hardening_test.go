package e2e

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"

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
