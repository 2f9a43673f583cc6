package cache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/storage"
	"github.com/gatehouse/gatehouse/storage/datadir"
)

// gatedBlobs is a blob store whose writers stop before their second write
// until release is closed: a cache file write that lags behind upstream.
type gatedBlobs struct {
	storage.BlobStore
	release chan struct{}
}

func (g *gatedBlobs) Create(ctx context.Context, d v1.Hash) (storage.BlobWriter, error) {
	w, err := g.BlobStore.Create(ctx, d)
	if err != nil {
		return nil, err
	}
	return &gatedWriter{BlobWriter: w, release: g.release}, nil
}

type gatedWriter struct {
	storage.BlobWriter
	release chan struct{}
	writes  int
}

func (w *gatedWriter) Write(p []byte) (int, error) {
	if w.writes++; w.writes > 1 {
		<-w.release
	}
	return w.BlobWriter.Write(p)
}

// The first reader of a cold blob is sent every byte but the last while
// the cache file write is stuck after its first chunk: from the fetch's
// chunks in memory. The last byte still waits for the digest, which waits
// for the file write; then the blob is committed whole.
func TestFirstReaderAheadOfTheFileWrite(t *testing.T) {
	st, err := datadir.Open(t.TempDir(), datadir.Options{NoGate: true})
	if err != nil {
		t.Fatal(err)
	}
	gated := &gatedBlobs{BlobStore: st.Blobs, release: make(chan struct{})}
	s, err := Open(Options{Blobs: gated, Meta: st.Cache, Closer: st, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	released := false
	defer func() {
		if !released {
			close(gated.release)
		}
	}()
	data, d := randomBlob(t, 3*chunkSize+5)
	stream, err := s.Fetch(context.Background(), d, "up", source(data))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := stream.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	r := stream.Reader(ctx, 0, nil)
	got := make([]byte, len(data))
	if n, err := io.ReadFull(r, got[:len(data)-1]); err != nil {
		t.Fatalf("the reader got %d bytes while the file write was stuck after one chunk: %v", n, err)
	}
	if m := s.Stats().Memory; m < int64(len(data)-1-chunkSize) {
		t.Errorf("%d bytes sent from memory, want at least every byte the file did not have (%d)", m, len(data)-1-chunkSize)
	}
	// The last byte is held back: the digest is not verified yet.
	short, cancelShort := context.WithTimeout(ctx, 100*time.Millisecond)
	n, err := stream.Reader(short, int64(len(data)-1), nil).Read(got[len(data)-1:])
	cancelShort()
	if n != 0 || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("last byte before verification: read %d, %v", n, err)
	}
	close(gated.release)
	released = true
	rest, err := io.ReadAll(stream.Reader(ctx, int64(len(data)-1), nil))
	if err != nil || len(rest) != 1 {
		t.Fatalf("last byte after the write: %d bytes, %v", len(rest), err)
	}
	got[len(data)-1] = rest[0]
	if !bytes.Equal(got, data) {
		t.Fatal("bytes differ")
	}
	s.wg.Wait()
	if size, ok := s.StatBlob(d); !ok || size != int64(len(data)) {
		t.Errorf("blob not committed whole: %d, %v", size, ok)
	}
}

// A reader sent bytes from memory sees a digest mismatch as an error and
// never the last byte, as a reader of the file does.
func TestMemoryReaderSeesDigestMismatch(t *testing.T) {
	s := open(t, t.TempDir(), 0)
	defer s.Close()
	data, d := randomBlob(t, 2*chunkSize+7)
	bad := bytes.Clone(data)
	bad[chunkSize+3] ^= 1
	stream, err := s.Fetch(context.Background(), d, "up", source(bad))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	if err := stream.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(stream.Reader(context.Background(), 0, nil))
	if !errors.Is(err, ErrDigestMismatch) || len(got) >= len(data) {
		t.Fatalf("read %d of %d bytes, %v; want fewer and a digest mismatch", len(got), len(data), err)
	}
	s.wg.Wait()
	if _, ok := s.StatBlob(d); ok {
		t.Error("blob kept")
	}
}
