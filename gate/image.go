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

func (l *layer) Compressed() (io.ReadCloser, error) {
	rc, _, err := l.img.blobs.OpenBlob(l.img.ctx, l.img.s.Upstream, l.img.s.Repo, l.desc.Digest)
	if err != nil {
		return nil, fmt.Errorf("fetching layer %s: %w", l.desc.Digest, err)
	}
	return rc, nil
}
