package cache

import (
	"context"
	"sync"
	"sync/atomic"
)

// chunk is one read from upstream on its way to the blob writer and the hash.
type chunk struct {
	buf    *[]byte
	n      int
	refs   atomic.Int32
	budget chan struct{} // the store's chunk budget, one token per chunk
}

// newChunk takes a buffer from the store's budget, waiting while every
// chunk of it is in use (and letting go of the written chunks fetches
// keep for their readers meanwhile); it fails only when ctx ends. Waiting for a buffer
// is not upstream's silence: pause(true) stops the download's timers
// meanwhile and pause(false) starts them again.
func (s *Store) newChunk(ctx context.Context, pause func(bool)) (*chunk, error) {
	select {
	case s.chunks <- struct{}{}:
	default:
		pause(true)
		s.squeezed.Add(1)
		defer s.squeezed.Add(-1)
		s.dropRetained()
		select {
		case s.chunks <- struct{}{}:
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
		pause(false)
	}
	return &chunk{buf: bufPool.Get().(*[]byte), budget: s.chunks}, nil
}

func (c *chunk) bytes() []byte { return (*c.buf)[:c.n] }

// free returns the chunk's buffer and its token.
func (c *chunk) free() {
	bufPool.Put(c.buf)
	<-c.budget
}

func (c *chunk) release() {
	if c.refs.Add(-1) == 0 {
		c.free()
	}
}

// DefaultMaxFetchChunks bounds the chunks of all fetches together (128
// MiB): when the disk is slower than the upstreams, many concurrent cold
// downloads wait for a buffer instead of each filling its pipeline.
const DefaultMaxFetchChunks = 128

// chunkSize is the size of one read from upstream, and so the unit in
// which a fetch hands bytes to its blob writer and its hasher. 1 MiB reads
// cost a cold GiB about a fifth less CPU than 256 KiB ones (fewer system
// calls and goroutine hand-offs); 2 and 4 MiB cost more again, the chunk
// no longer staying in the core's cache between the reader, the hasher and
// the writer (measured by BenchmarkColdFetch and with `make bench`).
const chunkSize = 1 << 20

var bufPool = sync.Pool{New: func() any { b := make([]byte, chunkSize); return &b }}
