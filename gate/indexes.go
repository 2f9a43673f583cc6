package gate

import (
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// scopeKey scopes what an index says of its platform manifests to the
// repository it was served from: an index published elsewhere says
// nothing of another repository's images.
func scopeKey(upstream, repo string, dgst v1.Hash) string {
	return upstream + "/" + repo + "@" + dgst.String()
}

// maxParents bounds the platform manifest → index map.
const maxParents = 65536

// noteIndex remembers which index lists which platform manifests.
func (g *Gate) noteIndex(s *Subject) {
	idx, err := v1.ParseIndexManifest(strings.NewReader(string(s.Manifest)))
	if err != nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.parents) > maxParents {
		clear(g.parents)
		clear(g.platforms)
	}
	for _, m := range idx.Manifests {
		k := scopeKey(s.Upstream, s.Repo, m.Digest)
		g.parents[k] = s.Digest
		if m.Platform != nil {
			g.platforms[k] = platformString(m.Platform.OS, m.Platform.Architecture, m.Platform.Variant)
		}
	}
}

// platformString writes a platform as os/architecture[/variant].
func platformString(os, arch, variant string) string {
	if os == "" && arch == "" {
		return ""
	}
	p := os + "/" + arch
	if variant != "" {
		p += "/" + variant
	}
	return p
}

func (g *Gate) platform(s *Subject) string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.platforms[scopeKey(s.Upstream, s.Repo, s.Digest)]
}

func (g *Gate) parent(s *Subject) *v1.Hash {
	g.mu.Lock()
	defer g.mu.Unlock()
	if p, ok := g.parents[scopeKey(s.Upstream, s.Repo, s.Digest)]; ok {
		return &p
	}
	return nil
}
