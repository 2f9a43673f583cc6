package gate

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/storage"
)

// Back-off after failed scans. A scan that fails (a layer whose diffID does
// not match, a blob upstream will not serve, a tar the analyser rejects)
// is remembered per upstream and digest, so that a crafted image cannot be
// fetched and decompressed again at full cost on every HEAD, filling
// gate.scanConcurrency. The wait doubles with each consecutive failure,
// from minBackoff up to maxBackoff; a success forgets the failures.
const (
	minBackoff  = 15 * time.Second
	maxBackoff  = 15 * time.Minute
	maxFailures = 16384 // remembered images; the map is cleared when full
)

// BackoffError is a scan not attempted because the last one of the same
// image failed a short while ago.
type BackoffError struct {
	Failures   int           // consecutive failed scans
	RetryAfter time.Duration // until the next scan may be tried
	Err        error         // the last scan's error
}

func (e *BackoffError) Error() string {
	return fmt.Sprintf("the last %d scan(s) of this image failed; next try in %s: %v",
		e.Failures, e.RetryAfter.Round(time.Second), e.Err)
}

func (e *BackoffError) Unwrap() error { return e.Err }

// errShutdown ends a scan because gatehouse is stopping: not a failure of
// the image.
var errShutdown = errors.New("gatehouse is shutting down")

type failure struct {
	count int
	until time.Time
	err   error
}

// failureMemo remembers failed scans, and what they showed of layer blobs.
// It is safe for concurrent use.
type failureMemo struct {
	mu    sync.Mutex
	m     map[string]*failure
	facts map[string]layerFact // upstream@blob digest → what a scan showed of it
}

// layerFact is what a scan learnt of a layer blob's content, whatever
// manifest listed it: its uncompressed digest, when a config declared
// another, or the scan limit it breaks. Facts of content, not of a claim:
// another image listing the blob with its true diffID is not affected.
type layerFact struct {
	diffID string
	limit  *LimitError
}

func newFailureMemo() *failureMemo {
	return &failureMemo{m: map[string]*failure{}, facts: map[string]layerFact{}}
}

// learn records what a failed scan of an image (info) showed of one of its
// layers: err is a *LayerError or *LimitError naming a declared diffID.
// Only a diffID declared for exactly one blob names a blob for certain.
func (f *failureMemo) learn(upstream string, info *manifestInfo, err error) {
	var le *LayerError
	var lim *LimitError
	var diffID string
	switch {
	case errors.As(err, &le):
		diffID = le.Layer
	case errors.As(err, &lim):
		diffID = lim.Layer
	default:
		return
	}
	blobs := map[v1.Hash]bool{}
	for i, d := range info.diffIDs {
		if d.String() == diffID && i < len(info.layers) {
			blobs[info.layers[i].Digest] = true
		}
	}
	if len(blobs) != 1 {
		return
	}
	blob := slices.Collect(maps.Keys(blobs))[0]
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.facts) >= maxFailures {
		clear(f.facts)
	}
	fact := f.facts[failureKey(upstream, blob)]
	if le != nil {
		fact.diffID = le.Actual
	} else {
		fact.limit = lim
	}
	f.facts[failureKey(upstream, blob)] = fact
}

// known returns the error a scan of info would end with, from what earlier
// scans showed of its layer blobs; nil when nothing is known against it.
func (f *failureMemo) known(upstream string, info *manifestInfo) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, l := range info.layers {
		fact, ok := f.facts[failureKey(upstream, l.Digest)]
		if !ok || i >= len(info.diffIDs) {
			continue
		}
		claimed := info.diffIDs[i].String()
		if fact.limit != nil {
			lim := *fact.limit
			lim.Layer = claimed
			return &lim
		}
		if fact.diffID != "" && fact.diffID != claimed {
			return &LayerError{Layer: claimed, Actual: fact.diffID}
		}
	}
	return nil
}

func failureKey(upstream string, dgst v1.Hash) string { return upstream + "@" + dgst.String() }

// check returns a *BackoffError while the image's last scan failed less
// than its back-off ago, else nil.
func (f *failureMemo) check(upstream string, dgst v1.Hash, now time.Time) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	e := f.m[failureKey(upstream, dgst)]
	if e == nil || !now.Before(e.until) {
		return nil
	}
	return &BackoffError{Failures: e.count, RetryAfter: e.until.Sub(now), Err: e.err}
}

// done records the outcome of a scan: err nil forgets past failures; a
// shutdown is not a failure of the image.
func (f *failureMemo) done(upstream string, dgst v1.Hash, err error, now time.Time) {
	k := failureKey(upstream, dgst)
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil {
		delete(f.m, k)
		return
	}
	var p *Pending
	if errors.Is(err, errShutdown) || errors.As(err, &p) || errors.Is(err, storage.ErrUnavailable) {
		// Not the image's doing: a database or object store that does
		// not answer is tried again with the next request.
		return
	}
	e := f.m[k]
	if e == nil {
		if len(f.m) >= maxFailures {
			clear(f.m)
		}
		e = &failure{}
		f.m[k] = e
	}
	e.count++
	wait := minBackoff << min(e.count-1, 10)
	e.until, e.err = now.Add(min(wait, maxBackoff)), err
}
