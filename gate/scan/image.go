package scan

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	ftypes "github.com/aquasecurity/trivy/pkg/fanal/types"
)

// ErrLimit is wrapped by the error of a scan that stopped because a layer broke
// Options.MaxLayerSize or Options.MaxFiles.
var ErrLimit = errors.New("scan: layer exceeds a limit")

// image adapts a v1.Image to what Trivy's image artifact wants (a name and an
// ID next to the v1.Image methods) and puts the limits on every layer it reads.
type image struct {
	v1.Image
	name     string
	maxBytes int64
	maxFiles int
}

var _ ftypes.Image = (*image)(nil)

func (i *image) Name() string { return i.name }

// ID is the config digest, the image ID Docker and containerd show; Trivy keys
// the image-config part of its cache with it.
func (i *image) ID() (string, error) {
	h, err := i.ConfigName()
	if err != nil {
		return "", err
	}
	return h.String(), nil
}

func (i *image) RepoTags() []string    { return nil }
func (i *image) RepoDigests() []string { return nil }

func (i *image) LayerByDiffID(h v1.Hash) (v1.Layer, error) {
	l, err := i.Image.LayerByDiffID(h)
	if err != nil {
		return nil, err
	}
	return i.wrap(l), nil
}

func (i *image) LayerByDigest(h v1.Hash) (v1.Layer, error) {
	l, err := i.Image.LayerByDigest(h)
	if err != nil {
		return nil, err
	}
	return i.wrap(l), nil
}

func (i *image) Layers() ([]v1.Layer, error) {
	ls, err := i.Image.Layers()
	if err != nil {
		return nil, err
	}
	out := make([]v1.Layer, len(ls))
	for n, l := range ls {
		out[n] = i.wrap(l)
	}
	return out, nil
}

// wrap always returns a pointer to a struct: Trivy inspects a layer's type
// with reflect.TypeOf(l).Elem() to tell compressed from uncompressed layers,
// which panics on a layer that is not a pointer.
func (i *image) wrap(l v1.Layer) v1.Layer {
	return &layer{Layer: l, maxBytes: i.maxBytes, maxFiles: i.maxFiles}
}

// layer enforces the limits on the uncompressed stream Trivy reads.
type layer struct {
	v1.Layer
	maxBytes int64
	maxFiles int
}

func (l *layer) Uncompressed() (io.ReadCloser, error) {
	rc, err := l.Layer.Uncompressed()
	if err != nil {
		return nil, err
	}
	if l.maxBytes <= 0 && l.maxFiles <= 0 {
		return rc, nil
	}
	diffID, _ := l.DiffID()
	lr := &limitReader{rc: rc, diffID: diffID.String(), max: l.maxBytes}
	if l.maxFiles > 0 {
		lr.files = newFileCounter(l.maxFiles, lr.diffID)
	}
	return lr, nil
}

// limitReader fails the read that crosses max bytes, and, through files, the
// read that completes the tar header of one file too many.
type limitReader struct {
	rc     io.ReadCloser
	diffID string
	max    int64
	n      int64
	files  *fileCounter
}

func (r *limitReader) Read(p []byte) (int, error) {
	n, err := r.rc.Read(p)
	r.n += int64(n)
	if r.max > 0 && r.n > r.max {
		return 0, fmt.Errorf("%w: layer %s is larger than %d bytes uncompressed", ErrLimit, r.diffID, r.max)
	}
	if r.files != nil && n > 0 {
		if ferr := r.files.write(p[:n]); ferr != nil {
			return 0, ferr
		}
	}
	return n, err
}

func (r *limitReader) Close() error {
	err := r.rc.Close()
	if r.files != nil {
		r.files.close()
	}
	return err
}

// fileCounter counts tar entries of the bytes fed to it, with archive/tar
// reading the other end of a pipe, so a layer with more than max entries
// fails while it is being read, not after Trivy has walked all of it.
type fileCounter struct {
	pw   *io.PipeWriter
	done chan struct{}
	mu   sync.Mutex
	err  error // ErrLimit once the limit is passed
}

func newFileCounter(max int, diffID string) *fileCounter {
	pr, pw := io.Pipe()
	fc := &fileCounter{pw: pw, done: make(chan struct{})}
	go func() {
		defer close(fc.done)
		tr := tar.NewReader(pr)
		for n := 0; ; n++ {
			if _, err := tr.Next(); err != nil {
				// A malformed stream is Trivy's to report; stop counting
				// and swallow the rest.
				_, _ = io.Copy(io.Discard, pr)
				return
			}
			if n >= max {
				fc.mu.Lock()
				fc.err = fmt.Errorf("%w: layer %s has more than %d files", ErrLimit, diffID, max)
				fc.mu.Unlock()
				pr.CloseWithError(fc.err)
				return
			}
		}
	}()
	return fc
}

func (fc *fileCounter) write(p []byte) error {
	if _, err := fc.pw.Write(p); err != nil {
		fc.mu.Lock()
		defer fc.mu.Unlock()
		if fc.err != nil {
			return fc.err
		}
		// The counter stopped for another reason; it no longer reads, so
		// stop feeding it.
		return nil
	}
	return nil
}

func (fc *fileCounter) close() {
	fc.pw.Close()
	<-fc.done
}
