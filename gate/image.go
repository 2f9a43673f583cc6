package gate

import (
	"context"
	"fmt"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// maxConfigSize caps an image config read for a scan.
const maxConfigSize = 8 << 20

// image is a v1.Image whose config and layers are read through gatehouse's
// cache (joining the single-flight fetch clients use). go-containerregistry's
// image interfaces take no context, so the scan's context travels here.
type image struct {
	ctx   context.Context
	blobs BlobOpener
	s     *Subject
	info  *manifestInfo
}

func newImage(ctx context.Context, blobs BlobOpener, s *Subject, info *manifestInfo) v1.Image {
	img, _ := partial.CompressedToImage(&image{ctx: ctx, blobs: blobs, s: s, info: info})
	return img
}

var _ partial.CompressedImageCore = (*image)(nil)

func (i *image) RawManifest() ([]byte, error)        { return i.s.Manifest, nil }
func (i *image) MediaType() (types.MediaType, error) { return types.MediaType(i.s.MediaType), nil }

func (i *image) RawConfigFile() ([]byte, error) {
	rc, _, err := i.blobs.OpenBlob(i.ctx, i.s.Upstream, i.s.Repo, i.info.config.Digest)
	if err != nil {
		return nil, fmt.Errorf("fetching config %s: %w", i.info.config.Digest, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, maxConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading config %s: %w", i.info.config.Digest, err)
	}
	if len(b) > maxConfigSize {
		return nil, fmt.Errorf("config %s is larger than 8 MiB", i.info.config.Digest)
	}
	return b, nil
}

func (i *image) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	for _, l := range i.info.layers {
		if l.Digest == h {
			return &layer{img: i, desc: l}, nil
		}
	}
	if h == i.info.config.Digest {
		return &layer{img: i, desc: i.info.config}, nil
	}
	return nil, fmt.Errorf("layer %s is not in manifest %s", h, i.s.Digest)
}

type layer struct {
	img  *image
	desc v1.Descriptor
}

func (l *layer) Digest() (v1.Hash, error)            { return l.desc.Digest, nil }
func (l *layer) Size() (int64, error)                { return l.desc.Size, nil }
func (l *layer) MediaType() (types.MediaType, error) { return l.desc.MediaType, nil }

// Compressed reads the layer through the cache, which checks its digest.
// The size the manifest declares is checked too (the size is not part of
// the digest): a blob of another size fails the read, so a scan never
// reads more than the manifest admits to.
func (l *layer) Compressed() (io.ReadCloser, error) {
	rc, size, err := l.img.blobs.OpenBlob(l.img.ctx, l.img.s.Upstream, l.img.s.Repo, l.desc.Digest)
	if err != nil {
		return nil, fmt.Errorf("fetching layer %s: %w", l.desc.Digest, err)
	}
	if size >= 0 && size != l.desc.Size {
		rc.Close()
		return nil, l.sizeError(size)
	}
	return &sizedReader{rc: rc, l: l}, nil
}

func (l *layer) sizeError(size int64) error {
	return fmt.Errorf("layer %s is %d bytes but manifest %s declares %d", l.desc.Digest, size, l.img.s.Digest, l.desc.Size)
}

// sizedReader fails a layer read past its declared size, or ending short
// of it.
type sizedReader struct {
	rc io.ReadCloser
	l  *layer
	n  int64
}

func (r *sizedReader) Read(p []byte) (int, error) {
	n, err := r.rc.Read(p)
	r.n += int64(n)
	switch {
	case r.n > r.l.desc.Size:
		return 0, fmt.Errorf("layer %s is larger than the %d bytes manifest %s declares", r.l.desc.Digest, r.l.desc.Size, r.l.img.s.Digest)
	case err == io.EOF && r.n != r.l.desc.Size:
		return n, r.l.sizeError(r.n)
	}
	return n, err
}

func (r *sizedReader) Close() error { return r.rc.Close() }
