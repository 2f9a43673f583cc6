package gate

import (
	"cmp"
	"encoding/json"
	"fmt"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// manifestInfo is what the gate reads of a manifest.
type manifestInfo struct {
	kind string
	// artifactType is the manifest's artifactType, else its config media
	// type (for records and messages); declaredType is the artifactType
	// field alone.
	artifactType string
	declaredType string
	platform     string
	// diffIDs are the config's rootfs.diff_ids, one per layer, once read.
	diffIDs []v1.Hash
	config  v1.Descriptor
	layers  []v1.Descriptor
}

func parseManifest(s *Subject) (*manifestInfo, error) {
	m, err := v1.ParseManifest(strings.NewReader(string(s.Manifest)))
	if err != nil {
		return nil, fmt.Errorf("parsing manifest: %w", err)
	}
	// A descriptor without a digest cannot be fetched, so the image cannot
	// be judged: refuse it rather than judge a part of it.
	for i, d := range append([]v1.Descriptor{m.Config}, m.Layers...) {
		if d.Digest.Algorithm == "" || d.Size < 0 {
			return nil, fmt.Errorf("parsing manifest: descriptor %d has no digest or a negative size", i)
		}
	}
	var a struct {
		ArtifactType string `json:"artifactType"`
	}
	_ = json.Unmarshal(s.Manifest, &a)
	return &manifestInfo{kind: "image", artifactType: cmp.Or(a.ArtifactType, string(m.Config.MediaType)), declaredType: a.ArtifactType,
		config: m.Config, layers: m.Layers}, nil
}

// isArtifact reports whether a manifest is a non-image artifact that passes
// unscanned. What a client can run decides, never a label: a manifest with
// any layer of an image-layer media type is an image, whatever its
// artifactType or config media type claim (containerd reads neither when it
// unpacks; it parses the config blob as an image config whatever its media
// type). Otherwise it passes when its config media type or artifactType is
// on gate.passArtifactTypes, or, as cosign writes legacy signatures with an
// ordinary image config, when every layer's media type is.
func (g *Gate) isArtifact(info *manifestInfo) bool {
	for _, l := range info.layers {
		if IsImageLayer(string(l.MediaType)) {
			return false
		}
	}
	if g.pass[string(info.config.MediaType)] || (info.declaredType != "" && g.pass[info.declaredType]) {
		return true
	}
	if len(info.layers) == 0 {
		return false
	}
	for _, l := range info.layers {
		if !g.pass[string(l.MediaType)] {
			return false
		}
	}
	return true
}

// IsImageLayer reports whether a layer media type is one a container
// runtime unpacks into a root filesystem: OCI image layers and Docker
// rootfs diffs, in any compression or encryption, distributable or not
// (application/vnd.oci.image.layer.*, application/vnd.docker.image.rootfs.*).
// Media types are compared as clients do, ignoring case and parameters,
// so no spelling of one slips through as an artifact.
func IsImageLayer(mediaType string) bool {
	mt, _, _ := strings.Cut(mediaType, ";")
	mt = strings.ToLower(strings.TrimSpace(mt))
	return strings.HasPrefix(mt, "application/vnd.oci.image.layer.") ||
		strings.HasPrefix(mt, "application/vnd.docker.image.rootfs.")
}

// readConfig reads an image's config and checks it against the manifest:
// a runtime unpacks layer i and checks it against rootfs.diff_ids[i], and
// refuses an image whose counts differ (containerd: "mismatched image
// rootfs and manifest layers"). Such an image is refused here too, before
// a scan that would read only the layers the config names.
func readConfig(img v1.Image, info *manifestInfo) error {
	cf, err := img.ConfigFile()
	if err != nil {
		return fmt.Errorf("reading the image config: %w", err)
	}
	if n := len(cf.RootFS.DiffIDs); n != len(info.layers) {
		return fmt.Errorf("the manifest lists %d layers but its config declares %d (rootfs.diff_ids): no runtime unpacks it", len(info.layers), n)
	}
	info.diffIDs = cf.RootFS.DiffIDs
	if info.platform == "" {
		info.platform = platformString(cf.OS, cf.Architecture, cf.Variant)
	}
	return nil
}
