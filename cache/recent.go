package cache

// A fetch's readers are sent the bytes from its chunks in memory while it
// has them, and from the blob writer's file only after that: the first
// client of a cold blob, and every other that keeps up with the download,
// need not wait for the file write, and costs no file read. A fetch keeps
// every chunk not yet written, and retainChunks written ones after them
// while the store's chunk budget allows; when a download waits for a
// buffer, every fetch lets its written chunks go (dropRetained, and
// trimLocked while squeezed). The budget bounds them all, as it bounds the
// pipeline.
//
// Readers copy out of a chunk under a reference of their own, into their
// own buffer, and hold none while writing to a client: a client that stops
// reading holds no chunk and no token of the budget. What they get from
// memory is what the hash and the file get; the last byte is held back
// until the digest is verified, as for bytes read from the file.

// retainChunks is how many written chunks a fetch keeps for readers that
// are a little behind the download.
const retainChunks = pipelineDepth

// retain is how many written chunks the fetch may keep now.
func (f *fetch) retain() int {
	if f.s.squeezed.Load() > 0 {
		return 0
	}
	return retainChunks
}

// trimLocked lets go of written chunks from the oldest on until at most
// keep of them are left; keep < 0 lets go of every chunk (the fetch ended).
func (f *fetch) trimLocked(keep int) {
	if keep < 0 {
		for _, c := range f.recent {
			c.release()
		}
		f.recent, f.recentOff = nil, f.received
		return
	}
	written, end := 0, f.recentOff
	for _, c := range f.recent {
		if end += int64(c.n); end > f.written {
			break
		}
		written++
	}
	drop := max(written-keep, 0)
	for _, c := range f.recent[:drop] {
		f.recentOff += int64(c.n)
		c.release()
	}
	f.recent = append(f.recent[:0], f.recent[drop:]...)
}

// dropRetained makes every fetch of the store let go of its written
// chunks, for a download waiting for a buffer.
func (s *Store) dropRetained() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range s.fetches {
		f.mu.Lock()
		f.trimLocked(0)
		f.mu.Unlock()
	}
}

// fromMemory copies into p the bytes of the blob from pos on that the
// fetch has in memory; p must not reach beyond the bytes received. When it
// copies nothing, every byte from pos up to inFile is in the blob writer's
// file (none when inFile <= pos).
func (f *fetch) fromMemory(p []byte, pos int64) (n int, inFile int64) {
	type piece struct {
		c    *chunk
		from int64
	}
	var held [2 * (retainChunks + pipelineDepth)]piece
	pieces := held[:0]
	f.mu.Lock()
	off := f.recentOff
	recent := f.recent
	if pos < off {
		recent = nil // before the chunks in memory: the file has it
	}
	for _, c := range recent {
		end := off + int64(c.n)
		if end > pos && off < pos+int64(len(p)) {
			c.refs.Add(1)
			pieces = append(pieces, piece{c, max(pos, off) - off})
		}
		off = end
	}
	inFile = f.written
	if len(f.recent) > 0 {
		inFile = min(inFile, f.recentOff)
	}
	f.mu.Unlock()
	for _, pc := range pieces {
		n += copy(p[n:], pc.c.bytes()[pc.from:])
		pc.c.release()
	}
	return n, inFile
}
