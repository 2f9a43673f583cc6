package cache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/gatehouse/gatehouse/metrics"
)

// stallBody sends head, then nothing until ctx ends, as a dead connection
// does. Like an HTTP response body, it fails once ctx ended.
func stallBody(ctx context.Context, head []byte) io.ReadCloser {
	pr, pw := io.Pipe()
	go func() {
		pw.Write(head)
		<-ctx.Done()
		pw.CloseWithError(ctx.Err())
	}()
	go func() {
		<-ctx.Done()
		pr.CloseWithError(ctx.Err()) // also ends a Write under way
	}()
	return pr
}

// ctxBody reads r until ctx ends, then fails, as an HTTP response body
// does once its request was given up.
type ctxBody struct {
	ctx context.Context
	r   io.Reader
}

func (b *ctxBody) Read(p []byte) (int, error) {
	if err := b.ctx.Err(); err != nil {
		return 0, err
	}
	return b.r.Read(p)
}

func (b *ctxBody) Close() error { return nil }

var errReset = errors.New("connection reset by peer")

// resetBody sends head, then fails as a connection reset mid-body does.
func resetBody(head []byte) io.ReadCloser {
	return io.NopCloser(io.MultiReader(bytes.NewReader(head), iotest.ErrReader(errReset)))
}

// resumes returns the resumes counted for upstream so far.
func resumes(upstream string) (ok, failed float64) {
	return testutil.ToFloat64(metrics.BlobFetchResumes.WithLabelValues(upstream, "ok")),
		testutil.ToFloat64(metrics.BlobFetchResumes.WithLabelValues(upstream, "failed"))
}

// waitFor polls cond until it holds; the deadline only catches a hang.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// An upstream that stalls in the middle of a blob and stays broken for a
// while (its first resume stalls too) and then heals: the reader that
// started the fetch and one that joined it during the stall both get the
// verified blob once the upstream answers again, long before the stall
// timeout (an hour here), and every resume cost one upstream request.
func TestStalledFetchResumesAfterHeal(t *testing.T) {
	s, err := openDir(t.TempDir(), Options{StallTimeout: time.Hour, ResumeAfter: 50 * time.Millisecond,
		Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	data, d := randomBlob(t, 3*chunkSize+12345)
	var calls atomic.Int32
	var healed atomic.Bool
	src := func(ctx context.Context, off int64) (io.ReadCloser, int64, int64, error) {
		if calls.Add(1) == 1 {
			return stallBody(ctx, data[:len(data)/2]), 0, int64(len(data)), nil
		}
		if !healed.Load() {
			return stallBody(ctx, nil), off, int64(len(data)), nil
		}
		return io.NopCloser(bytes.NewReader(data[off:])), off, int64(len(data)), nil
	}
	okBefore, failedBefore := resumes("stalling.example")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // a hang fails, not blocks, the test
	defer cancel()

	read := func(st *Stream) <-chan error {
		done := make(chan error, 1)
		go func() {
			got, err := io.ReadAll(st.Reader(ctx, 0, nil))
			if err == nil && !bytes.Equal(got, data) {
				err = errors.New("content differs")
			}
			done <- err
		}()
		return done
	}
	first, err := s.Fetch(ctx, d, "stalling.example", src)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	if err := first.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	firstDone := read(first)
	// The first resume is under way, and stalls as well.
	waitFor(t, "a resume", func() bool { return calls.Load() >= 2 })
	joined, err := s.Fetch(ctx, d, "stalling.example", src)
	if err != nil {
		t.Fatal(err)
	}
	defer joined.Close()
	if s.Stats().Joined != 1 {
		t.Fatalf("the second reader did not join the fetch: %+v", s.Stats())
	}
	if err := joined.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	joinedDone := read(joined)

	healed.Store(true)
	for name, done := range map[string]<-chan error{"first": firstDone, "joined": joinedDone} {
		if err := <-done; err != nil {
			t.Fatalf("%s reader: %v", name, err)
		}
	}
	waitFor(t, "the commit", func() bool { _, ok := s.StatBlob(d); return ok })
	ok, failed := resumes("stalling.example")
	ok, failed = ok-okBefore, failed-failedBefore
	if ok != 1 || failed < 1 {
		t.Errorf("resumes: %v ok, %v failed; want 1 ok after at least 1 failed", ok, failed)
	}
	if n := calls.Load(); float64(n) != 1+ok+failed {
		t.Errorf("%d upstream requests for 1 fetch and %v resumes", n, ok+failed)
	}
}

// An upstream that stays silent whatever is asked: the fetch fails with
// ErrStalled after maxResumes resumes, long before the stall timeout,
// and nothing is kept.
func TestResumeGivesUp(t *testing.T) {
	s, err := openDir(t.TempDir(), Options{StallTimeout: time.Hour, ResumeAfter: 5 * time.Millisecond,
		Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	data, d := randomBlob(t, 1000)
	var calls atomic.Int32
	src := func(ctx context.Context, off int64) (io.ReadCloser, int64, int64, error) {
		calls.Add(1)
		return stallBody(ctx, data[:100]), 0, int64(len(data)), nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	got, err := fetchRead(t, ctx, s, d, src)
	if !errors.Is(err, ErrStalled) {
		t.Fatalf("read %d bytes, err %v; want ErrStalled", len(got), err)
	}
	s.wg.Wait()
	if n := calls.Load(); n != 1+maxResumes {
		t.Errorf("%d upstream requests, want 1 + %d resumes", n, maxResumes)
	}
	if _, ok := s.StatBlob(d); ok {
		t.Error("blob kept")
	}
	if ents := tmpFiles(t, s); len(ents) != 0 {
		t.Errorf("temp files left: %v", ents)
	}
}

// A body that breaks off is resumed at once: whether upstream answers the
// resume with the rest (206) or the whole blob again (200, Range
// ignored), the reader gets the verified blob. A resume that brings wrong
// bytes or announces another size fails the fetch and keeps nothing.
func TestResumeAfterReset(t *testing.T) {
	data, d := randomBlob(t, 2*chunkSize+777)
	half := int64(len(data) / 2)
	bad := bytes.Clone(data)
	bad[len(bad)-10] ^= 0xff
	size := int64(len(data))
	for _, tc := range []struct {
		name    string
		resumed func(off int64) (io.ReadCloser, int64, int64, error)
		want    func(error) bool // nil: the blob is served and cached
	}{
		{"206", func(off int64) (io.ReadCloser, int64, int64, error) {
			return io.NopCloser(bytes.NewReader(data[off:])), off, size, nil
		}, nil},
		{"200 ignoring the range", func(off int64) (io.ReadCloser, int64, int64, error) {
			return io.NopCloser(iotest.HalfReader(bytes.NewReader(data))), 0, size, nil
		}, nil},
		{"wrong bytes", func(off int64) (io.ReadCloser, int64, int64, error) {
			return io.NopCloser(bytes.NewReader(bad[off:])), off, size, nil
		}, func(err error) bool { return errors.Is(err, ErrDigestMismatch) }},
		{"another size", func(off int64) (io.ReadCloser, int64, int64, error) {
			return io.NopCloser(bytes.NewReader(data[off:])), off, size + 1, nil
		}, func(err error) bool { return errors.Is(err, ErrSizeMismatch) }},
		{"from a later byte", func(off int64) (io.ReadCloser, int64, int64, error) {
			return io.NopCloser(bytes.NewReader(data[off+1:])), off + 1, size, nil
		}, func(err error) bool { return err != nil && strings.Contains(err.Error(), "when asked from byte") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := openDir(t.TempDir(), Options{ResumeAfter: 40 * time.Millisecond, Log: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			var calls atomic.Int32
			src := func(ctx context.Context, off int64) (io.ReadCloser, int64, int64, error) {
				if calls.Add(1) == 1 {
					return resetBody(data[:half]), 0, size, nil
				}
				return tc.resumed(off)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			got, err := fetchRead(t, ctx, s, d, src)
			s.wg.Wait()
			if tc.want == nil {
				if err != nil || !bytes.Equal(got, data) {
					t.Fatalf("read %d bytes, err %v", len(got), err)
				}
				if _, ok := s.StatBlob(d); !ok {
					t.Fatal("blob not cached")
				}
				if n := calls.Load(); n != 2 {
					t.Fatalf("%d upstream requests, want 2", n)
				}
				return
			}
			if !tc.want(err) {
				t.Fatalf("read %d bytes, err %v", len(got), err)
			}
			if len(got) >= len(data) {
				t.Fatal("a failed fetch looked complete")
			}
			if _, ok := s.StatBlob(d); ok {
				t.Fatal("blob kept")
			}
			if ents := tmpFiles(t, s); len(ents) != 0 {
				t.Fatalf("temp files left: %v", ents)
			}
		})
	}
}

// A download that waits for a chunk buffer (every one of the store's is in
// use) is not silent: it is not resumed, however long the wait.
func TestChunkWaitIsNotSilence(t *testing.T) {
	s, err := openDir(t.TempDir(), Options{maxChunks: 1, ResumeAfter: 500 * time.Millisecond, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	data, d := randomBlob(t, 2*chunkSize)
	var calls atomic.Int32
	src := func(ctx context.Context, off int64) (io.ReadCloser, int64, int64, error) {
		calls.Add(1)
		return &ctxBody{ctx: ctx, r: bytes.NewReader(data[off:])}, off, int64(len(data)), nil
	}
	s.chunks <- struct{}{} // the only buffer is taken
	st, err := s.Fetch(context.Background(), d, "up", src)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * 500 * time.Millisecond) // five silence windows
	<-s.chunks
	got, err := io.ReadAll(st.Reader(context.Background(), 0, nil))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes, err %v", len(got), err)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("%d upstream requests: the wait for a buffer was taken for silence", n)
	}
}
