package cache

import (
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// manifestMemo keeps recently read manifests in memory, by digest, when
// the records live in a shared database: a manifest is immutable and was
// verified against its digest before it was stored, so a copy is always
// right, and a request by digest costs no database round trip. It holds
// at most maxBytes of manifest data and forgets the oldest entries first.
type manifestMemo struct {
	mu       sync.Mutex
	m        map[v1.Hash]*Manifest
	order    []v1.Hash // insertion order, oldest first
	bytes    int64
	maxBytes int64
}

// memoBytes bounds the manifest memo of a store on shared records.
const memoBytes = 16 << 20

func newManifestMemo(maxBytes int64) *manifestMemo {
	return &manifestMemo{m: map[v1.Hash]*Manifest{}, maxBytes: maxBytes}
}

// get returns a copy of the remembered manifest (nil when there is none).
func (c *manifestMemo) get(d v1.Hash) *Manifest {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if m := c.m[d]; m != nil {
		cp := *m
		return &cp
	}
	return nil
}

// put remembers a copy of m.
func (c *manifestMemo) put(m *Manifest) {
	if c == nil || int64(len(m.Data)) > c.maxBytes/16 {
		return
	}
	cp := *m
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.m[m.Digest]; old != nil {
		c.bytes -= int64(len(old.Data))
	} else {
		c.order = append(c.order, m.Digest)
	}
	c.m[m.Digest] = &cp
	c.bytes += int64(len(m.Data))
	for c.bytes > c.maxBytes && len(c.order) > 0 {
		d := c.order[0]
		c.order = c.order[1:]
		if old := c.m[d]; old != nil {
			c.bytes -= int64(len(old.Data))
			delete(c.m, d)
		}
	}
}

// clear forgets everything.
func (c *manifestMemo) clear() {
	if c == nil {
		return
	}
	c.mu.Lock()
	clear(c.m)
	c.order, c.bytes = nil, 0
	c.mu.Unlock()
}
