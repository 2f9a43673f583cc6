package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/gatehouse/gatehouse/metrics"
)

// DefaultResumeAfter is how long a download may receive nothing before it
// is resumed from the bytes received, with a new request.
const DefaultResumeAfter = 5 * time.Second

// maxResumes bounds the resumes in a row that bring no new byte; when the
// next one would be needed, the fetch fails.
const maxResumes = 4

// errSilent ends a request whose body sent nothing for its silence window.
var errSilent = errors.New("upstream sent nothing for resumeAfter")

// transfer reads a fetch's bytes from upstream. When the body goes silent
// for resumeAfter, or breaks off (a reset, a truncated body), it closes
// that request and asks again from the bytes received (Source with an
// offset: a Range request on a new connection), so that the clients
// waiting on the fetch go on once upstream answers again instead of failing
// or hanging on a dead connection.
//
// Resumes are bounded: each one in a row that brings no new byte gives the
// next a silence window twice as long (and, after an error, a back-off that
// doubles), and after maxResumes of them the fetch fails. The fetch's stall
// timer (stallTimeout without a byte) bounds the whole.
//
// Its methods take the fetch's context, which ends with the store or when
// the stall timer fires.
type transfer struct {
	s           *Store
	f           *fetch
	src         Source
	stall       *time.Timer // ends the fetch after stallAfter without a byte
	stallAfter  time.Duration
	resumeAfter time.Duration
	size        int64 // announced by the first response; -1 unknown
	got         int64 // bytes handed to the writer and the hasher

	// The request being read.
	body    io.ReadCloser
	cancel  context.CancelCauseFunc // ends its request
	silence *time.Timer             // ends its request after window() without a byte
	silent  *atomic.Bool            // set when silence ended it
	skip    int64                   // bytes it repeats before new ones (upstream ignored the range)
	tries   int                     // resumes in a row without a new byte
	fresh   bool                    // the body is a resume that has brought no new byte yet
}

// window is how long the request being read may send nothing.
func (t *transfer) window() time.Duration { return t.resumeAfter << t.tries }

// open requests the blob from byte off and returns the size upstream
// announced. The silence window of a resume covers its wait for response
// headers as well; the first request's wait is bounded by the upstream
// client (responseHeaderTimeout) and the stall timer only.
func (t *transfer) open(ctx context.Context, off int64, first bool) (int64, error) {
	req, cancel := context.WithCancelCause(ctx)
	silent := new(atomic.Bool)
	arm := func() *time.Timer {
		return time.AfterFunc(t.window(), func() { silent.Store(true); cancel(errSilent) })
	}
	var silence *time.Timer
	if !first {
		silence = arm()
	}
	body, start, size, err := t.src(req, off)
	if err == nil && (start < 0 || start > off) {
		body.Close()
		err = fmt.Errorf("upstream sent the blob from byte %d when asked from byte %d", start, off)
	}
	if err != nil {
		if silence != nil {
			silence.Stop()
		}
		err = silentOr(silent, err)
		cancel(nil)
		return 0, err
	}
	if silence == nil {
		silence = arm()
	}
	t.body, t.cancel, t.silence, t.silent, t.skip = body, cancel, silence, silent, off-start
	return size, nil
}

// closeBody ends the request being read.
func (t *transfer) closeBody() {
	t.silence.Stop()
	t.cancel(nil)
	t.body.Close()
	t.body = nil
}

// silentOr marks err as the end of a silent request when the silence
// timer ended the request.
func silentOr(silent *atomic.Bool, err error) error {
	if silent.Load() {
		return fmt.Errorf("%w (%v)", errSilent, err)
	}
	return err
}

// pause stops the timers while the download waits for a chunk buffer, and
// starts them again afterwards: that wait is not upstream's silence.
func (t *transfer) pause(on bool) {
	if on {
		t.stall.Stop()
		t.silence.Stop()
		return
	}
	t.stall.Reset(t.stallAfter)
	t.silence.Reset(t.window())
}

// read hands the blob's bytes to the writer and the hasher until the body
// ends, resuming it as often as that helps. It stops early when the writer
// failed.
func (t *transfer) read(ctx context.Context, toHash, toFile chan<- *chunk) error {
	defer func() {
		if t.body != nil {
			t.closeBody()
		}
		if t.fresh {
			metrics.BlobFetchResumes.WithLabelValues(t.f.upstream, "failed").Inc()
		}
	}()
	for {
		err := t.readBody(ctx, toHash, toFile)
		switch {
		case err == nil || t.f.failed():
			return nil // at the end, or the writer's error is reported
		case ctx.Err() != nil, errors.Is(err, ErrSizeMismatch):
			return err
		case t.size >= 0 && t.got == t.size:
			return nil // every byte is in; the digest decides
		}
		t.closeBody()
		if err := t.resume(ctx, err); err != nil {
			return err
		}
	}
}

// readBody reads the current body into chunks for the writer and the
// hasher. It returns nil at the body's end.
func (t *transfer) readBody(ctx context.Context, toHash, toFile chan<- *chunk) error {
	fetched := metrics.UpstreamBytes.WithLabelValues(t.f.upstream)
	for {
		c, err := t.s.newChunk(ctx, t.pause)
		if err != nil {
			return err
		}
		n, err := t.body.Read(*c.buf)
		received := n > 0
		if received {
			t.stall.Reset(t.stallAfter)
			t.s.fetchedBytes.Add(int64(n))
			fetched.Add(float64(n))
			if t.skip > 0 {
				// Upstream ignored the range: drop what the fetch has.
				drop := int(min(int64(n), t.skip))
				t.skip -= int64(drop)
				n = copy(*c.buf, (*c.buf)[drop:n])
			}
		}
		if n == 0 {
			c.free()
		} else {
			if t.fresh {
				t.fresh = false
				metrics.BlobFetchResumes.WithLabelValues(t.f.upstream, "ok").Inc()
			}
			t.tries = 0
			t.got += int64(n)
			if t.size >= 0 && t.got > t.size {
				c.free()
				return ErrSizeMismatch
			}
			c.n = n
			c.refs.Store(3) // the hasher's, the writer's, the readers' (recent)
			t.f.arrive(c)
			toHash <- c
			toFile <- c
		}
		if received {
			t.silence.Reset(t.window())
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return silentOr(t.silent, err)
		}
		if t.f.failed() {
			return nil
		}
	}
}

// resume asks upstream again for the blob from the bytes received, after
// the body ended with cause. It returns once a request was answered, and
// fails when maxResumes in a row brought no new byte or the fetch ended.
func (t *transfer) resume(ctx context.Context, cause error) error {
	for {
		if t.fresh {
			metrics.BlobFetchResumes.WithLabelValues(t.f.upstream, "failed").Inc()
			t.fresh = false
		}
		silent := errors.Is(cause, errSilent)
		if t.tries >= maxResumes {
			if silent {
				return fmt.Errorf("%w: %d resumes in a row brought nothing", ErrStalled, t.tries)
			}
			return fmt.Errorf("%d resumes in a row brought nothing: %w", t.tries, cause)
		}
		t.tries++
		// A body that broke off is resumed at once the first time, and
		// with a back-off that doubles after that; a silent one has
		// waited its window already.
		if !silent && t.tries > 1 {
			wait := time.NewTimer(t.resumeAfter / 4 << (t.tries - 2))
			select {
			case <-wait.C:
			case <-ctx.Done():
				wait.Stop()
				return fmt.Errorf("%w (%v)", context.Cause(ctx), cause)
			}
		}
		t.s.log.Info("resuming blob fetch", "digest", t.f.dgst, "upstream", t.f.upstream,
			"offset", t.got, "try", t.tries, "cause", cause)
		t.fresh = true
		size, err := t.open(ctx, t.got, false)
		if err == nil {
			if t.size >= 0 && size >= 0 && size != t.size {
				t.closeBody()
				return fmt.Errorf("%w: upstream announced %d bytes, then %d when resumed", ErrSizeMismatch, t.size, size)
			}
			return nil
		}
		if ctx.Err() != nil {
			return err
		}
		cause = err
	}
}
