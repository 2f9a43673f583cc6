package scan

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/aquasecurity/trivy/pkg/cache"
	ftypes "github.com/aquasecurity/trivy/pkg/fanal/types"
)

// layerFlight tracks the layers being analysed, by cache key, so that
// concurrent scans of images on one base analyse the base once: a scan
// that finds a missing layer claimed by another waits for that analysis
// instead of repeating it.
type layerFlight struct {
	mu       sync.Mutex
	inflight map[string]chan struct{} // closed when the claim ends
	// waiting counts the scans waiting for another's claim (for tests:
	// they wait for it instead of sleeping).
	waiting atomic.Int32
}

// scanCache is the layer cache as one scan sees it: it claims the layers
// it has to analyse and counts them.
type scanCache struct {
	cache.Cache
	flight *layerFlight
	// broken returns the limit error of a layer (by diffID) read by this
	// scan; such a layer's analysis is never cached.
	broken func(diffID string) error

	mu      sync.Mutex
	claimed map[string]chan struct{}
	missing atomic.Int64
}

// MissingBlobs returns the layers this scan must analyse. Layers claimed by
// another scan are waited for, holding no claim meanwhile (so two scans
// never wait for each other), then looked up again: analysed by the other
// scan, they are no longer missing; failed there, this scan claims them.
func (c *scanCache) MissingBlobs(ctx context.Context, artifactID string, blobIDs []string) (bool, []string, error) {
	for {
		missingArtifact, missing, err := c.Cache.MissingBlobs(ctx, artifactID, blobIDs)
		if err != nil {
			return false, nil, err
		}
		wait := c.claim(missing)
		if wait == nil {
			c.missing.Store(int64(len(missing)))
			return missingArtifact, missing, nil
		}
		c.flight.waiting.Add(1)
		select {
		case <-wait:
		case <-ctx.Done():
			c.flight.waiting.Add(-1)
			return false, nil, ctx.Err()
		}
		c.flight.waiting.Add(-1)
	}
}

// claim claims every key of missing, or none and returns a claim of
// another scan to wait for.
func (c *scanCache) claim(missing []string) <-chan struct{} {
	f := c.flight
	f.mu.Lock()
	defer f.mu.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, k := range missing {
		if ch, ok := f.inflight[k]; ok && c.claimed[k] != ch {
			return ch
		}
	}
	if f.inflight == nil {
		f.inflight = map[string]chan struct{}{}
	}
	if c.claimed == nil {
		c.claimed = map[string]chan struct{}{}
	}
	for _, k := range missing {
		if _, ok := c.claimed[k]; ok {
			continue
		}
		ch := make(chan struct{})
		f.inflight[k], c.claimed[k] = ch, ch
	}
	return nil
}

// PutBlob stores a layer's analysis and ends this scan's claim on it.
func (c *scanCache) PutBlob(ctx context.Context, blobID string, info ftypes.BlobInfo) error {
	if err := c.broken(info.DiffID); err != nil {
		c.releaseKey(blobID)
		return err
	}
	err := c.Cache.PutBlob(ctx, blobID, info)
	c.releaseKey(blobID)
	return err
}

func (c *scanCache) releaseKey(k string) {
	f := c.flight
	f.mu.Lock()
	defer f.mu.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	ch, ok := c.claimed[k]
	if !ok {
		return
	}
	delete(c.claimed, k)
	if f.inflight[k] == ch {
		delete(f.inflight, k)
	}
	close(ch)
}

// release ends the claims left when the scan ends (its analysis failed or
// was cancelled): waiting scans look again and take them over.
func (c *scanCache) release() {
	c.mu.Lock()
	keys := make([]string, 0, len(c.claimed))
	for k := range c.claimed {
		keys = append(keys, k)
	}
	c.mu.Unlock()
	for _, k := range keys {
		c.releaseKey(k)
	}
}
