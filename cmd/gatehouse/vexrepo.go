package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/gate/vex"
	"github.com/gatehouse/gatehouse/pull"
)

// Bounds of a VEX repository artifact.
const (
	maxVEXLayers     = 64
	maxVEXLayerBytes = 16 << 20
)

// vexRepo is one rule's VEX repository and what was last read from it.
type vexRepo struct {
	rule, ref string
	every     time.Duration
	digest    string // of the manifest last read
	next      time.Time
}

// refreshRepos reads every VEX repository that is due, through content
// (the upstream client and the cache), and reports whether any changed.
// A repository that cannot be read keeps what was read before (none at
// first: nothing is suppressed on its account) and is tried again at its
// next refresh.
func (f *vexFilter) refreshRepos(ctx context.Context, content *pull.Content, now time.Time) (changed bool) {
	for _, r := range f.repos {
		if now.Before(r.next) {
			continue
		}
		r.next = now.Add(r.every)
		dgst, docs, err := fetchVEXRepo(ctx, content, r.ref)
		if err != nil {
			f.log.Warn("VEX repository could not be read; keeping what was read before", "rule", r.rule, "repository", r.ref, "err", err)
			continue
		}
		if dgst == r.digest {
			continue
		}
		f.mu.Lock()
		f.repoDocs[r.ref] = docs
		f.mu.Unlock()
		f.log.Info("VEX repository read", "rule", r.rule, "repository", r.ref, "digest", dgst, "documents", len(docs))
		r.digest, changed = dgst, true
	}
	return changed
}

// fetchVEXRepo reads an OCI artifact whose layers are VEX documents.
func fetchVEXRepo(ctx context.Context, content *pull.Content, ref string) (string, []*vex.Document, error) {
	up, rest, _ := strings.Cut(ref, "/")
	repo, tag := splitRef(rest)
	m, err := content.Manifest(ctx, up, repo, tag)
	if err != nil {
		return "", nil, err
	}
	if m.MediaType.IsIndex() {
		return "", nil, fmt.Errorf("%s is an index, not an artifact of VEX documents", ref)
	}
	man, err := v1.ParseManifest(bytes.NewReader(m.Data))
	if err != nil {
		return "", nil, fmt.Errorf("%s: %w", ref, err)
	}
	if len(man.Layers) == 0 || len(man.Layers) > maxVEXLayers {
		return "", nil, fmt.Errorf("%s has %d layers; want 1 to %d VEX documents", ref, len(man.Layers), maxVEXLayers)
	}
	var docs []*vex.Document
	for _, l := range man.Layers {
		if l.Size > maxVEXLayerBytes {
			return "", nil, fmt.Errorf("%s: layer %s is larger than %d MiB", ref, l.Digest, maxVEXLayerBytes>>20)
		}
		rc, _, err := content.OpenBlob(ctx, up, repo, l.Digest)
		if err != nil {
			return "", nil, err
		}
		data, err := io.ReadAll(io.LimitReader(rc, maxVEXLayerBytes+1))
		rc.Close()
		if err != nil {
			return "", nil, err
		}
		doc, err := vex.Parse(fmt.Sprintf("repository %s@%s", ref, m.Digest), data)
		if err != nil {
			return "", nil, fmt.Errorf("%s: layer %s: %w", ref, l.Digest, err)
		}
		docs = append(docs, doc)
	}
	return m.Digest.String(), docs, nil
}

// vexRefreshLoop reads the VEX repositories when due, and judges the
// stored images again when one changed.
func vexRefreshLoop(ctx context.Context, st *stack) {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if st.vex.refreshRepos(ctx, st.content, now) {
				if _, err := st.gate.Reevaluate(ctx); err != nil {
					st.log.Warn("re-judging images after a VEX repository changed", "err", err)
				}
			}
		}
	}
}
