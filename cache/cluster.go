package cache

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/metrics"
	"github.com/gatehouse/gatehouse/storage"
)

// Coordinator makes the one upstream fetch of a blob one for a whole
// cluster of replicas sharing the stores (package cluster implements it on
// PostgreSQL leases).
type Coordinator interface {
	// ClaimFetch is called before this replica fetches dgst from
	// upstream. It returns a Claim when this replica is to fetch it; a
	// Peer when another replica is fetching it; neither when this
	// replica's own claim is in place already (a fetch of this replica
	// is starting or ending: look again); or an error (the coordinating
	// store is unavailable: fail closed).
	ClaimFetch(ctx context.Context, dgst v1.Hash) (Claim, *Peer, error)
}

// Claim is this replica's cluster-wide claim on a fetch, renewed in the
// background while the fetch runs.
type Claim interface {
	// Lost is closed when the claim lapsed (it could not be renewed in
	// time, or another replica took it over): the fetch stops.
	Lost() <-chan struct{}
	// Confirm checks that the claim is still this replica's, right
	// before the blob is committed (the fencing check).
	Confirm(ctx context.Context) error
	// Release gives the claim up; later calls do nothing.
	Release()
}

// Peer is another replica fetching a blob.
type Peer struct {
	// Name identifies the replica, for logs and errors.
	Name string
	// Open streams the blob from that replica as it arrives there (off is
	// always 0: the stream is verified from its first byte). A replica
	// that cannot be reached (it died) makes Open fail with an error
	// wrapping ErrPeerGone.
	Open Source
	// Gone waits until the peer's claim is released or expired, so that
	// the fetch can be claimed again.
	Gone func(ctx context.Context) error
}

// ErrPeerGone is the error of a Peer whose replica does not answer.
var ErrPeerGone = errors.New("the replica fetching the blob does not answer")

// claim asks the cluster who fetches dgst. It returns a stream from the
// replica that does, or this replica's claim, or (nil, nil, errRetry) when
// this replica's own fetch is starting or ending. A replica that died
// holding the claim is waited out (its lease expires) and the claim is
// asked for again.
func (s *Store) claim(ctx context.Context, dgst v1.Hash, upstream string) (*Stream, Claim, error) {
	for tries := 0; tries < 3; tries++ {
		c, peer, err := s.coord.ClaimFetch(ctx, dgst)
		switch {
		case err != nil:
			return nil, nil, unavailable(err)
		case c != nil:
			return nil, c, nil
		case peer == nil:
			time.Sleep(retryDelay)
			return nil, nil, errRetry
		}
		// The peer request is cancelled with the stream's transfer (its
		// stall watchdog included), see opened.
		pctx, pcancel := context.WithCancel(ctx)
		body, start, size, err := peer.Open(pctx, 0)
		if err == nil {
			s.mu.Lock()
			s.stats.Peered++
			s.mu.Unlock()
			metrics.FetchesFromPeers.Inc()
			st := &Stream{dgst: dgst, src: opened(body, start, size, pcancel, peer.Open), stall: s.stallFor(upstream)}
			return st, nil, nil
		}
		pcancel()
		if !errors.Is(err, ErrPeerGone) {
			return nil, nil, err
		}
		s.log.Warn("the replica fetching a blob does not answer; waiting for its claim to lapse", "digest", dgst, "peer", peer.Name, "err", err)
		if err := peer.Gone(ctx); err != nil {
			return nil, nil, unavailable(err)
		}
	}
	return nil, nil, fmt.Errorf("cache: %w: no replica could fetch %s", storage.ErrUnavailable, dgst)
}

// opened is a Source whose first call returns a body opened already; the
// end of that call's context (the transfer's, which its stall watchdog
// cancels) cancels the body's request through cancel.
func opened(body io.ReadCloser, start, size int64, cancel context.CancelFunc, src Source) Source {
	first := true
	return func(ctx context.Context, off int64) (io.ReadCloser, int64, int64, error) {
		if first && off == 0 {
			first = false
			context.AfterFunc(ctx, cancel)
			return body, start, size, nil
		}
		return src(ctx, off)
	}
}

// claimAndCreate asks the cluster who fetches dgst and, when it is this
// replica, creates the blob's writer. It returns a stream from the peer
// fetching it; or the claim and the writer; or a stream straight from
// upstream when the blob store cannot be written; or errRetry when the
// blob was committed meanwhile. Called without s.mu.
func (s *Store) claimAndCreate(reqCtx, ctx context.Context, dgst v1.Hash, upstream string, src Source) (*Stream, Claim, storage.BlobWriter, error) {
	st, c, err := s.claim(reqCtx, dgst, upstream)
	if st != nil || err != nil {
		return st, nil, nil, err
	}
	if rec, err := s.record(dgst); rec != nil || err != nil {
		// Committed by a replica that released its claim just before
		// this one took it: read that.
		c.Release()
		return nil, nil, nil, cmp.Or(err, errRetry)
	}
	w, err := s.blobStore.Create(ctx, dgst)
	if err != nil {
		c.Release()
		s.noteWriteError(&WriteError{Err: err})
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.passStream(dgst, upstream, src), nil, nil, nil
	}
	return nil, c, w, nil
}

// PeerStream returns a stream of dgst for another replica: the committed
// blob, or this replica's fetch in progress. It never starts a fetch: it
// returns ErrNotFound when this replica has neither.
func (s *Store) PeerStream(dgst v1.Hash) (*Stream, error) {
	b, err := s.OpenBlob(dgst)
	if err == nil {
		return &Stream{file: b.BlobReader, blob: b}, nil
	}
	if !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	// A peer may ask between this replica's claim and the start of its
	// fetch (the writer is being created): wait for the fetch.
	for deadline := time.Now().Add(peerWait); ; time.Sleep(retryDelay) {
		s.mu.Lock()
		if f, ok := s.fetches[dgst]; ok {
			// No upstream to go on from: if this fetch cannot write the
			// store, the peer's transfer fails and it claims again.
			defer s.mu.Unlock()
			return s.joinLocked(f, f.upstream, noSource)
		}
		claiming := s.claiming[dgst]
		s.mu.Unlock()
		if !claiming || time.Now().After(deadline) {
			break
		}
	}
	if b, err := s.OpenBlob(dgst); err == nil {
		return &Stream{file: b.BlobReader, blob: b}, nil
	}
	return nil, ErrNotFound
}

// peerWait bounds how long a peer's request waits for this replica's
// fetch to start after it claimed it.
const peerWait = 10 * time.Second

// loadRecords builds the in-memory index from the blob records alone: the
// stores are shared, and the records are the truth (a blob is committed
// before its record is written, and an object without a record is not
// served; `gatehouse cache gc` removes such leftovers).
func (s *Store) loadRecords() error {
	err := s.meta.View(bg, func(tx storage.Tx) error {
		return tx.Scan(tableBlobs, nil, false, func(k, v []byte) (bool, error) {
			h, err := v1.NewHash(string(k))
			var rec blobRecord
			if err != nil || json.Unmarshal(v, &rec) != nil {
				return true, nil
			}
			s.blobs[h] = &blobEntry{size: rec.Size, atime: rec.Accessed, stored: rec.Accessed}
			s.size += rec.Size
			return true, nil
		})
	})
	if err != nil {
		return fmt.Errorf("cache: loading blob records: %w", err)
	}
	return nil
}

// EvictShared is the eviction of a shared store, run by one replica at a
// time (the caller holds the cluster's eviction lease): it reads every
// blob record, and deletes the least recently accessed blobs until the
// store is within limit. It leaves alone the blobs this replica is reading
// and those any replica accessed within grace (access times are flushed
// at least that often), and deletes a record before its blob, so that no
// replica starts reading what is being deleted.
func (s *Store) EvictShared(ctx context.Context, limit int64, grace time.Duration) (int, int64, error) {
	if limit <= 0 {
		limit = s.maxSize
	}
	if limit <= 0 {
		return 0, 0, nil
	}
	if err := s.FlushAccess(); err != nil {
		return 0, 0, unavailable(err)
	}
	var all []BlobInfo
	var total int64
	err := s.meta.View(ctx, func(tx storage.Tx) error {
		return tx.Scan(tableBlobs, nil, false, func(k, v []byte) (bool, error) {
			h, err := v1.NewHash(string(k))
			var rec blobRecord
			if err == nil && json.Unmarshal(v, &rec) == nil {
				all = append(all, BlobInfo{Digest: h, Size: rec.Size, Accessed: rec.Accessed})
				total += rec.Size
			}
			return true, nil
		})
	})
	if err != nil || total <= limit {
		return 0, 0, err
	}
	sortByAccess(all)
	cutoff := time.Now().Add(-grace)
	var n int
	var freed int64
	for _, b := range all {
		if total <= limit {
			break
		}
		if b.Accessed.After(cutoff) || s.reading(b.Digest) {
			continue
		}
		if ok, err := s.deleteRecordIf(ctx, b.Digest, cutoff); err != nil || !ok {
			if err != nil {
				return n, freed, unavailable(err)
			}
			continue
		}
		if err := s.blobStore.Delete(ctx, b.Digest); err != nil {
			s.log.Error("evicting blob", "digest", b.Digest, "err", err)
		}
		s.mu.Lock()
		s.forgetLocked(b.Digest)
		s.mu.Unlock()
		total -= b.Size
		freed += b.Size
		n++
	}
	if n > 0 {
		metrics.Evictions.Add(float64(n))
		metrics.EvictedBytes.Add(float64(freed))
		s.log.Info("evicted least recently used blobs of the shared store", "count", n, "bytes", freed, "size", total, "limit", limit)
	}
	return n, freed, nil
}

// reading reports whether this replica has the blob open.
func (s *Store) reading(dgst v1.Hash) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.blobs[dgst]
	return ok && e.readers > 0
}

// deleteRecordIf deletes the record of dgst unless it was accessed after
// cutoff (a replica flushed a fresh access since the scan).
func (s *Store) deleteRecordIf(ctx context.Context, dgst v1.Hash, cutoff time.Time) (bool, error) {
	deleted := false
	err := s.meta.Update(ctx, func(tx storage.Tx) error {
		k := []byte(dgst.String())
		v, err := tx.Get(tableBlobs, k)
		if err != nil || v == nil {
			return err
		}
		var rec blobRecord
		if json.Unmarshal(bytes.Clone(v), &rec) == nil && rec.Accessed.After(cutoff) {
			return nil
		}
		deleted = true
		return tx.Delete(tableBlobs, k)
	})
	return deleted, err
}

// noSource is the upstream of a peer's stream: there is none.
func noSource(context.Context, int64) (io.ReadCloser, int64, int64, error) {
	return nil, 0, 0, errors.New("cache: the fetch a peer was streaming could not write the store")
}
