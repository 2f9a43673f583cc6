package pull

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The fuzz targets of what upstreams send: manifests and Content-Range
// headers. Seeds are added here and in testdata/fuzz/<target>; `make fuzz`
// runs each briefly.

// isInvalid reports whether err is a MANIFEST_INVALID of a bad upstream.
func isInvalid(err error) bool {
	var pe *Error
	return errors.As(err, &pe) && pe.Code == CodeManifestInvalid && pe.BadUpstream
}

// An upstream's Content-Range decides where a resumed blob download goes
// on: a parsed one is one well-formed range inside the complete length,
// and prints back as it was read.
func FuzzParseContentRange(f *testing.F) {
	for _, s := range []string{
		"bytes 0-9/10", "bytes 5-9/10", "bytes 5-9/*", "bytes 5-10/10", "bytes 9-5/10", "bytes -1-5/10", "bytes 0-9",
		"bytes */10", "bytes=0-9/10", "bytes 0-9/", "bytes 00-09/010", "bytes +1-2/3", "bytes 0-9223372036854775807/*",
		"bytes 1-2/3/4", "items 0-1/2",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		start, end, size, ok := parseContentRange(v)
		if !ok {
			return
		}
		if start < 0 || end < start || size != -1 && size <= end {
			t.Fatalf("parseContentRange(%q) = %d-%d/%d: not a range inside the blob", v, start, end, size)
		}
		total := "*"
		if size >= 0 {
			total = strconv.FormatInt(size, 10)
		}
		if s2, e2, z2, ok2 := parseContentRange(fmt.Sprintf("bytes %d-%d/%s", start, end, total)); !ok2 || s2 != start || e2 != end || z2 != size {
			t.Fatalf("parseContentRange(%q) = %d-%d/%d does not read back", v, start, end, size)
		}
	})
}

func FuzzManifestMediaType(f *testing.F) {
	dg := "sha256:" + strings.Repeat("a", 64)
	for _, s := range [][2]string{
		{`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"` + dg + `","size":2},"layers":[]}`, ""},
		{`{"schemaVersion":2,"config":{"digest":"` + dg + `","size":2},"layers":[{"digest":"` + dg + `","size":5}]}`, string(types.DockerManifestSchema2)},
		{`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"digest":"` + dg + `","size":7,"platform":{"os":"linux","architecture":"amd64"}}]}`, ""},
		{`{"schemaVersion":2,"manifests":[]}`, string(types.DockerManifestList) + "; charset=utf-8"},
		{`{"schemaVersion":1,"name":"x","fsLayers":[]}`, "application/vnd.docker.distribution.manifest.v1+prettyjws"},
		{`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","config":{}}`, ""},
		{`{"schemaVersion":2,"config":5}`, ""},
		{`{"schemaVersion":2,"config":{"digest":"md5:x","size":-1}}`, ""},
		{`{"schemaVersion":2,"manifests":[{"digest":"","size":1}]}`, ""},
		{`[]`, ""}, {``, ""}, {`null`, string(types.OCIManifestSchema1)},
		{`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[],"layers":[{"digest":"` + dg + `","size":5}]}`, ""},
		{`{"schemaVersion":2,"config":{"digest":"` + dg + `","size":2},"layers":[],"manifests":[]}`, ""},
	} {
		f.Add([]byte(s[0]), s[1])
	}
	f.Fuzz(func(t *testing.T, data []byte, contentType string) {
		mt, err := validate(data, contentType)
		if err != nil {
			if !isInvalid(err) || mt != "" {
				t.Fatalf("manifestMediaType: %q, %v; want MANIFEST_INVALID", mt, err)
			}
			return
		}
		if !KnownManifestType(mt) {
			t.Fatalf("manifestMediaType accepted unknown type %q", mt)
		}
		if !json.Valid(data) {
			t.Fatalf("manifestMediaType accepted invalid JSON %q", data)
		}
		// Never both an image and an index: a client could read the other.
		var doc map[string]json.RawMessage
		json.Unmarshal(data, &doc)
		_, hasConfig := doc["config"]
		_, hasLayers := doc["layers"]
		_, hasManifests := doc["manifests"]
		if hasManifests && (hasConfig || hasLayers) {
			t.Fatalf("manifestMediaType accepted an ambiguous document as %s: %q", mt, data)
		}
		// What is accepted is a well-formed manifest of its type: every
		// descriptor the gate and clients will follow has a digest and size.
		var descs []v1.Descriptor
		if mt.IsIndex() {
			idx, perr := v1.ParseIndexManifest(strings.NewReader(string(data)))
			if perr != nil {
				t.Fatalf("accepted index does not parse: %v", perr)
			}
			descs = idx.Manifests
		} else {
			m, perr := v1.ParseManifest(strings.NewReader(string(data)))
			if perr != nil {
				t.Fatalf("accepted manifest does not parse: %v", perr)
			}
			descs = append([]v1.Descriptor{m.Config}, m.Layers...)
		}
		for _, d := range descs {
			if d.Digest.Algorithm == "" || d.Digest.Hex == "" || d.Size < 0 {
				t.Fatalf("accepted %s with descriptor %+v", mt, d)
			}
		}
	})
}

// An index with image fields, or an image with children, is refused: one
// client would run what another (and the gate) reads as an index.
func TestAmbiguousManifestRefused(t *testing.T) {
	dg := "sha256:" + strings.Repeat("a", 64)
	for _, doc := range []string{
		`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[],"config":{"digest":"` + dg + `","size":2},"layers":[{"digest":"` + dg + `","size":5}]}`,
		`{"schemaVersion":2,"manifests":[],"layers":[{"digest":"` + dg + `","size":5}]}`,
		`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"digest":"` + dg + `","size":2},"layers":[],"manifests":[]}`,
	} {
		if mt, err := validate([]byte(doc), ""); err == nil || !isInvalid(err) || !strings.Contains(err.Error(), "ambiguous") {
			t.Errorf("%s: %q, %v; want MANIFEST_INVALID (ambiguous)", doc, mt, err)
		}
	}
}
