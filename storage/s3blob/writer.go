package s3blob

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/storage"
)

// abortTimeout bounds the AbortMultipartUpload of Abort, which has no
// context of its own (an upload it fails to abort is left to
// CleanUploads).
const abortTimeout = 30 * time.Second

var errAborted = errors.New("s3blob: the write was aborted or its commit failed")

// Create starts writing dgst: a spool file, and a goroutine that uploads
// each full part of it as soon as it was written. The uploads run under
// ctx (and stop at Abort); nothing is visible in S3 before Commit.
//
// Create first asks S3 about the object (HeadObject), so that a store
// that cannot be reached fails here, before the caller started a
// download, rather than at its first full part or at Commit.
func (s *Store) Create(ctx context.Context, dgst v1.Hash) (storage.BlobWriter, error) {
	key, err := s.key(dgst)
	if err != nil {
		return nil, err
	}
	if _, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &s.bucket, Key: &key}); err != nil && !isNotFound(err) {
		return nil, fmt.Errorf("s3blob: create %s: %w", dgst, err)
	}
	f, err := os.CreateTemp(s.spool, dgst.Hex+".*"+spoolSuffix)
	if err != nil {
		return nil, fmt.Errorf("s3blob: spool file: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	w := &writer{
		s: s, dgst: dgst, key: key, f: f, path: f.Name(),
		cancel: cancel,
		kick:   make(chan struct{}, 1),
		finish: make(chan struct{}),
		done:   make(chan struct{}),
	}
	go w.upload(ctx)
	return w, nil
}

// writer writes one blob to its spool file while a goroutine uploads the
// file's full parts. Write is called by one goroutine, Partial by any,
// Commit and Abort after the last Write (and not at the same time: op
// serialises them all the same).
type writer struct {
	s    *Store
	dgst v1.Hash
	key  string
	f    *os.File // the spool file, open for writing
	path string

	cancel     context.CancelFunc // stops the uploads
	kick       chan struct{}      // a Write happened
	finish     chan struct{}      // closed: no more Writes
	finishOnce sync.Once
	done       chan struct{} // closed when upload returned

	// Owned by upload until done is closed, then by Commit or Abort.
	uploadID string
	parts    []types.CompletedPart
	uploaded int64 // bytes of the spool file in parts

	op sync.Mutex // serialises Commit and Abort

	mu      sync.Mutex // guards what follows
	written int64      // bytes in the spool file
	err     error      // the first upload error
	state   int
}

const (
	writing = iota
	committing
	committed
	failed // Commit failed: only Abort is left
	aborted
)

// Write appends to the spool file. It fails once an upload failed, so
// that the caller stops writing a blob that cannot be stored.
func (w *writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	err, state := w.err, w.state
	w.mu.Unlock()
	switch {
	case err != nil:
		return 0, err
	case state != writing:
		return 0, errAborted
	}
	n, err := w.f.Write(p)
	w.mu.Lock()
	w.written += int64(n)
	w.mu.Unlock()
	select {
	case w.kick <- struct{}{}:
	default:
	}
	if err != nil {
		return n, fmt.Errorf("s3blob: spool file: %w", err)
	}
	return n, nil
}

// Partial opens the spool file; once the blob was committed, the object.
func (w *writer) Partial() (storage.BlobReader, error) {
	w.mu.Lock()
	state := w.state
	var f *os.File
	var err error
	if state == writing || state == committing {
		// Under the lock: Commit removes the file when it sets committed.
		f, err = os.Open(w.path)
	}
	w.mu.Unlock()
	switch {
	case state == committed:
		r, _, err := w.s.Open(context.Background(), w.dgst)
		return r, err
	case state == failed || state == aborted:
		return nil, errAborted
	case err != nil:
		return nil, fmt.Errorf("s3blob: spool file: %w", err)
	}
	return f, nil
}

// upload sends each full part of the spool file as soon as it was
// written, until the writer is finished (then every full part is sent)
// or aborted (ctx ends).
func (w *writer) upload(ctx context.Context) {
	defer close(w.done)
	for {
		w.mu.Lock()
		ready := w.written-w.uploaded >= w.s.partSize
		w.mu.Unlock()
		if !ready {
			select {
			case <-w.kick:
				continue
			case <-w.finish:
				// Every Write happened before finish was closed: one more
				// look finds the last full part, if any.
				w.mu.Lock()
				ready = w.written-w.uploaded >= w.s.partSize
				w.mu.Unlock()
				if !ready {
					return
				}
			case <-ctx.Done():
				w.mu.Lock()
				if w.err == nil {
					w.err = fmt.Errorf("s3blob: upload of %s stopped: %w", w.dgst, context.Cause(ctx))
				}
				w.mu.Unlock()
				return
			}
		}
		if err := w.uploadPart(ctx, w.s.partSize); err != nil {
			w.mu.Lock()
			w.err = err
			w.mu.Unlock()
			return
		}
	}
}

// uploadPart uploads the next n bytes of the spool file as the next part,
// starting the multipart upload first if need be.
func (w *writer) uploadPart(ctx context.Context, n int64) error {
	s := w.s
	if w.uploadID == "" {
		out, err := s.client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{
			Bucket: &s.bucket, Key: &w.key, ContentType: aws.String("application/octet-stream"),
		})
		if err != nil {
			return fmt.Errorf("s3blob: starting upload of %s: %w", w.dgst, err)
		}
		w.uploadID = aws.ToString(out.UploadId)
	}
	num := int32(len(w.parts) + 1)
	if num > maxParts {
		return fmt.Errorf("s3blob: %s has more than %d parts of %d bytes", w.dgst, maxParts, s.partSize)
	}
	out, err := s.client.UploadPart(ctx, &s3.UploadPartInput{
		Bucket: &s.bucket, Key: &w.key, UploadId: &w.uploadID, PartNumber: &num,
		Body: io.NewSectionReader(w.f, w.uploaded, n), ContentLength: &n,
	}, s.putOptions()...)
	if err != nil {
		return fmt.Errorf("s3blob: uploading part %d of %s: %w", num, w.dgst, err)
	}
	w.parts = append(w.parts, types.CompletedPart{ETag: out.ETag, PartNumber: &num})
	w.uploaded += n
	return nil
}

// Commit waits for the part uploads, uploads the rest and completes the
// upload (or puts a blob smaller than a part in one request). Only then
// is the object there. An object of that name that is there already is
// kept: names are digests, so it holds the same verified bytes.
func (w *writer) Commit(ctx context.Context) error {
	w.op.Lock()
	defer w.op.Unlock()
	w.mu.Lock()
	state := w.state
	if state == writing {
		w.state = committing
	}
	w.mu.Unlock()
	switch state {
	case committed:
		return nil
	case writing:
	default:
		return errAborted
	}
	w.finishOnce.Do(func() { close(w.finish) })
	<-w.done
	w.cancel() // the uploads are over: release their context
	err := w.complete(ctx)
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		w.state = failed
		return err
	}
	w.state = committed
	// Partial readers opened before keep the open file.
	w.f.Close()
	if err := os.Remove(w.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		w.s.log.Warn("s3: removing spool file", "err", err)
	}
	return nil
}

// ifNoneMatch makes a write conditional on the key being free.
var ifNoneMatch = aws.String("*")

// complete makes the object. Called by Commit after upload returned.
func (w *writer) complete(ctx context.Context) error {
	s := w.s
	w.mu.Lock()
	err, size := w.err, w.written
	w.mu.Unlock()
	if err != nil {
		return err
	}
	if w.uploadID == "" {
		_, err := s.client.PutObject(ctx, &s3.PutObjectInput{
			Bucket: &s.bucket, Key: &w.key, IfNoneMatch: ifNoneMatch,
			Body: io.NewSectionReader(w.f, 0, size), ContentLength: &size,
			ContentType: aws.String("application/octet-stream"),
		}, s.putOptions()...)
		if err != nil && !w.exists(ctx, err) {
			return fmt.Errorf("s3blob: putting %s: %w", w.dgst, err)
		}
		return nil
	}
	for w.uploaded < size {
		if err := w.uploadPart(ctx, min(size-w.uploaded, s.partSize)); err != nil {
			return err
		}
	}
	_, err = s.client.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{
		Bucket: &s.bucket, Key: &w.key, UploadId: &w.uploadID, IfNoneMatch: ifNoneMatch,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: w.parts},
	})
	if err != nil {
		if !w.exists(ctx, err) {
			return fmt.Errorf("s3blob: completing upload of %s: %w", w.dgst, err)
		}
		// Ours is not needed: the blob is there.
		w.abortUpload()
	}
	return nil
}

// exists reports whether a conditional write failed because the object
// was there already (412), or lost a race with another write of it (409,
// then the object must be there now).
func (w *writer) exists(ctx context.Context, err error) bool {
	switch {
	case isStatus(err, 412) || isCode(err, "PreconditionFailed"):
		return true
	case isStatus(err, 409) || isCode(err, "ConditionalRequestConflict"):
		_, herr := w.s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &w.s.bucket, Key: &w.key})
		return herr == nil
	}
	return false
}

// Abort stops the uploads, aborts the multipart upload and removes the
// spool file; after Commit it does nothing.
func (w *writer) Abort() error {
	w.op.Lock()
	defer w.op.Unlock()
	w.mu.Lock()
	state := w.state
	if state != committed {
		w.state = aborted
	}
	w.mu.Unlock()
	if state == committed || state == aborted {
		return nil
	}
	w.cancel()
	w.finishOnce.Do(func() { close(w.finish) })
	<-w.done
	err := w.f.Close()
	if rerr := os.Remove(w.path); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
		err = rerr
	}
	if aerr := w.abortUpload(); aerr != nil {
		err = aerr
	}
	return err
}

// abortUpload aborts the multipart upload, if one was started.
func (w *writer) abortUpload() error {
	if w.uploadID == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), abortTimeout)
	defer cancel()
	_, err := w.s.client.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: &w.s.bucket, Key: &w.key, UploadId: &w.uploadID})
	if err != nil && !isCode(err, "NoSuchUpload") {
		return fmt.Errorf("s3blob: aborting upload of %s: %w", w.dgst, err)
	}
	w.uploadID = ""
	return nil
}
