package gate

import (
	"errors"
	"fmt"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
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

// failureMemo remembers failed scans. It is safe for concurrent use.
type failureMemo struct {
	mu sync.Mutex
	m  map[string]*failure
}

func newFailureMemo() *failureMemo { return &failureMemo{m: map[string]*failure{}} }

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
	if errors.Is(err, errShutdown) || errors.As(err, &p) {
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
