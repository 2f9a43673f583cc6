package gate

import (
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// FuzzManifest feeds the gate's manifest readers what an upstream could
// send: the platform manifest parser behind every verdict, the index reader
// that links platform manifests to their index, and the artifact test that
// lets non-images pass without a scan.
func FuzzManifest(f *testing.F) {
	dg := "sha256:" + strings.Repeat("b", 64)
	for _, s := range []string{
		`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"` + dg + `","size":2},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"` + dg + `","size":3}]}`,
		`{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"` + dg + `","size":2},"layers":[]}`,
		`{"schemaVersion":2,"artifactType":"application/spdx+json","config":{"digest":"` + dg + `","size":2}}`,
		`{"schemaVersion":2,"config":{"digest":"` + dg + `","size":2},"layers":[{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json","digest":"` + dg + `","size":-1}]}`,
		`{"schemaVersion":2,"manifests":[{"digest":"` + dg + `","size":1},{"digest":"sha512:00"}]}`,
		`{"schemaVersion":2,"config":{}}`, `{"config":null}`, `{`, ``,
		`{"schemaVersion":2,"artifactType":"application/spdx+json","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"` + dg + `","size":2},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"` + dg + `","size":1}]}`,
	} {
		f.Add([]byte(s))
	}
	g := &Gate{parents: map[string]v1.Hash{}, pass: map[string]bool{"application/vnd.oci.empty.v1+json": true, "application/spdx+json": true, "application/vnd.dev.cosign.simplesigning.v1+json": true}}
	f.Fuzz(func(t *testing.T, data []byte) {
		s := &Subject{Upstream: "docker.io", Repo: "library/x", Digest: v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("c", 64)}, Manifest: data}
		g.noteIndex(s)
		info, err := parseManifest(s)
		if err != nil {
			return
		}
		// Everything the scan will fetch has an address.
		for _, d := range append([]v1.Descriptor{info.config}, info.layers...) {
			if d.Digest.Algorithm == "" || d.Size < 0 {
				t.Fatalf("parseManifest accepted descriptor %+v", d)
			}
		}
		// Only a declared artifact passes unscanned: by config type,
		// artifactType, or layers that are all of a passing type.
		// Nothing with an image layer passes, whatever its labels.
		if g.isArtifact(info) {
			for _, l := range info.layers {
				if IsImageLayer(string(l.MediaType)) {
					t.Fatalf("a manifest with image layer %s passed as an artifact", l.MediaType)
				}
			}
		}
		if g.isArtifact(info) && !g.pass[string(info.config.MediaType)] && !strings.Contains(string(data), "artifactType") {
			if len(info.layers) == 0 {
				t.Fatal("an image without layers or artifact type passed as an artifact")
			}
			for _, l := range info.layers {
				if !g.pass[string(l.MediaType)] {
					t.Fatalf("layer %s passed as an artifact", l.MediaType)
				}
			}
		}
	})
}
