package pull

import (
	"encoding/json"
	"fmt"
	"mime"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// validate checks a manifest once, for everything downstream (clients, the
// gate, the cache), and returns its media type: the mediaType field when
// set, else the Content-Type, else inferred from the content. Schema 1,
// unknown types, ambiguous documents and descriptors that point nowhere
// are refused.
func validate(data []byte, contentType string) (types.MediaType, error) {
	var doc struct {
		SchemaVersion int              `json:"schemaVersion"`
		MediaType     types.MediaType  `json:"mediaType"`
		Config        *json.RawMessage `json:"config"`
		Layers        *json.RawMessage `json:"layers"`
		Manifests     *json.RawMessage `json:"manifests"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return "", invalid("upstream manifest is not valid JSON: %v", err)
	}
	if doc.SchemaVersion != 2 {
		return "", invalid("manifest schemaVersion %d is not supported (only schema 2 and OCI)", doc.SchemaVersion)
	}
	mt := doc.MediaType
	if mt == "" {
		ct, _, _ := mime.ParseMediaType(contentType)
		mt = types.MediaType(ct)
	}
	if !KnownManifestType(mt) {
		switch {
		case doc.Manifests != nil:
			mt = types.OCIImageIndex
		case doc.Config != nil:
			mt = types.OCIManifestSchema1
		default:
			return "", invalid("unsupported manifest media type %q", truncate(string(mt), 100))
		}
	}
	isIndex := mt.IsIndex()
	if isIndex && doc.Manifests == nil || !isIndex && doc.Config == nil {
		return "", invalid("manifest content does not match its media type %s", mt)
	}
	// An index with image fields, or an image with children, is read one
	// way by one client and the other way by another (containerd refuses
	// both): the gate must not judge one reading while a client runs the
	// other.
	if isIndex && (doc.Config != nil || doc.Layers != nil) || !isIndex && doc.Manifests != nil {
		return "", invalid("%s is ambiguous: it has both image fields (config, layers) and index fields (manifests)", mt)
	}
	if err := checkDescriptors(doc.Config, doc.Layers, doc.Manifests, isIndex); err != nil {
		return "", invalid("upstream %s is malformed: %v", mt, err)
	}
	return mt, nil
}

func invalid(format string, args ...any) *Error {
	return badUpstream(CodeManifestInvalid, format, args...)
}

// checkDescriptors checks that every descriptor of a manifest (config and
// layers) or index (children) has a sha256 digest and a size that is not
// negative: clients, the cache and the gate follow them by digest, and a
// manifest pointing nowhere must not be cached or judged.
func checkDescriptors(config, layers, manifests *json.RawMessage, isIndex bool) error {
	var descs []v1.Descriptor
	decode := func(raw *json.RawMessage, into any) error {
		if raw == nil {
			return nil
		}
		return json.Unmarshal(*raw, into)
	}
	if isIndex {
		if err := decode(manifests, &descs); err != nil {
			return fmt.Errorf("manifests: %w", err)
		}
	} else {
		var c v1.Descriptor
		if err := decode(config, &c); err != nil {
			return fmt.Errorf("config: %w", err)
		}
		if err := decode(layers, &descs); err != nil {
			return fmt.Errorf("layers: %w", err)
		}
		descs = append([]v1.Descriptor{c}, descs...)
	}
	for i, d := range descs {
		if d.Digest.Algorithm == "" {
			return fmt.Errorf("descriptor %d has no digest", i)
		}
		if d.Size < 0 {
			return fmt.Errorf("descriptor %d has a negative size", i)
		}
	}
	return nil
}

// KnownManifestType reports whether mt is a manifest or index media type
// gatehouse serves.
func KnownManifestType(mt types.MediaType) bool {
	switch mt {
	case types.OCIImageIndex, types.OCIManifestSchema1, types.DockerManifestList, types.DockerManifestSchema2:
		return true
	}
	return false
}

// ParseDigest accepts sha256 digests only, in the canonical form (lower
// case hex): every blob and manifest gatehouse keeps is verified with it.
func ParseDigest(s string) (v1.Hash, error) {
	algo, hex, ok := strings.Cut(s, ":")
	if !ok {
		return v1.Hash{}, fmt.Errorf("invalid digest %q", truncate(s, 100))
	}
	if algo != "sha256" {
		return v1.Hash{}, fmt.Errorf("unsupported digest algorithm %q: gatehouse verifies sha256 digests", truncate(algo, 20))
	}
	if len(hex) != 64 || strings.Trim(hex, "0123456789abcdef") != "" {
		return v1.Hash{}, fmt.Errorf("invalid sha256 digest %q", truncate(s, 100))
	}
	return v1.Hash{Algorithm: algo, Hex: hex}, nil
}

// truncate shortens s to at most n bytes for a message.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
