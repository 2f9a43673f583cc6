package scan

import (
	"archive/tar"
	"io"
	"maps"
	"slices"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	ftypes "github.com/aquasecurity/trivy/pkg/fanal/types"

	"github.com/gatehouse/gatehouse/gate"
)

// image adapts a v1.Image to what Trivy's image artifact wants (a name and an
// ID next to the v1.Image methods) and puts the limits on every layer it reads.
type image struct {
	v1.Image
	name   string
	limits limits

	mu     sync.Mutex
	open   map[*limitReader]struct{} // limited streams not closed yet
	broken map[string]error          // diffID → the first limit it broke
}

// breach records that layer diffID broke a limit. Trivy drops some read
// errors (it reads a layer's tail after the tar's end and ignores the
// result), so a breach is kept here as well and checked before the layer's
// analysis is cached and before the scan returns.
func (i *image) breach(diffID string, err error) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.broken == nil {
		i.broken = map[string]error{}
	}
	if _, ok := i.broken[diffID]; !ok {
		i.broken[diffID] = err
	}
	return err
}

// breached returns the limit error of layer diffID, or with diffID "" of
// any layer; nil when none broke a limit.
func (i *image) breached(diffID string) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if diffID != "" {
		return i.broken[diffID]
	}
	for _, k := range slices.Sorted(maps.Keys(i.broken)) {
		return i.broken[k]
	}
	return nil
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
	return &layer{Layer: l, img: i}
}

// closeAll stops the tar watchers of streams the scan left open, so that no
// goroutine outlives the scan whatever Trivy did with the streams.
func (i *image) closeAll() {
	i.mu.Lock()
	open := slices.Collect(maps.Keys(i.open))
	i.mu.Unlock()
	for _, r := range open {
		r.Close()
	}
}

func (i *image) track(r *limitReader, add bool) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if add {
		if i.open == nil {
			i.open = map[*limitReader]struct{}{}
		}
		i.open[r] = struct{}{}
	} else {
		delete(i.open, r)
	}
}

// layer enforces the limits on the uncompressed stream Trivy reads: Trivy
// v0.74 reads a layer with LayerByDiffID(...).Uncompressed() and walks it
// with archive/tar (pkg/fanal/artifact/image, inspectLayer).
type layer struct {
	v1.Layer
	img *image
}

func (l *layer) Uncompressed() (io.ReadCloser, error) {
	rc, err := l.Layer.Uncompressed()
	if err != nil {
		return nil, err
	}
	lim := l.img.limits
	if lim.bytes <= 0 && lim.files <= 0 {
		return rc, nil
	}
	diffID, err := l.DiffID()
	if err != nil {
		rc.Close()
		return nil, err
	}
	lr := &limitReader{rc: rc, diffID: diffID.String(), lim: lim, img: l.img}
	lr.tar = newTarWatch(lr.checkEntry)
	l.img.track(lr, true)
	return lr, nil
}

// limits are gate.scanLimits as the scanner applies them; 0 is no limit.
type limits struct {
	bytes int64 // uncompressed bytes of a layer, and the sum of its entries' sizes
	files int64 // tar entries of a layer
}

// limitReader fails the read that takes a layer past a limit, before Trivy
// sees the bytes: past limits.bytes of the stream, or completing the tar
// header of one entry too many, or of an entry whose size takes the sum of
// the entries' sizes past limits.bytes. The declared sizes count because
// archive/tar expands the holes of a sparse file: a few bytes of stream can
// declare a terabyte file, which Trivy would copy to a temporary file.
type limitReader struct {
	rc     io.ReadCloser
	diffID string
	lim    limits
	img    *image
	n      int64 // stream bytes read
	tar    *tarWatch

	// Written by the watcher goroutine, read after feed returns.
	entries, declared int64

	closeOnce sync.Once
	closeErr  error
}

func (r *limitReader) Read(p []byte) (int, error) {
	n, err := r.rc.Read(p)
	r.n += int64(n)
	if r.lim.bytes > 0 && r.n > r.lim.bytes {
		return 0, r.img.breach(r.diffID, &gate.LimitError{Limit: gate.LimitLayerSize, Layer: r.diffID, Max: r.lim.bytes})
	}
	if n > 0 {
		if lerr := r.tar.feed(p[:n]); lerr != nil {
			return 0, r.img.breach(r.diffID, lerr)
		}
	}
	return n, err
}

// checkEntry runs on the watcher goroutine for every tar header.
func (r *limitReader) checkEntry(h *tar.Header) error {
	r.entries++
	if r.lim.files > 0 && r.entries > r.lim.files {
		return &gate.LimitError{Limit: gate.LimitLayerFiles, Layer: r.diffID, Max: r.lim.files}
	}
	if h.Size > 0 {
		r.declared += h.Size
	}
	if r.lim.bytes > 0 && (h.Size > r.lim.bytes || r.declared > r.lim.bytes) {
		return &gate.LimitError{Limit: gate.LimitLayerSize, Layer: r.diffID, Max: r.lim.bytes}
	}
	return nil
}

func (r *limitReader) Close() error {
	r.closeOnce.Do(func() {
		r.closeErr = r.rc.Close()
		r.tar.close()
		r.img.track(r, false)
	})
	return r.closeErr
}

// tarWatch parses a copy of a layer stream with archive/tar — the parser
// Trivy's walker uses, so both see the same entries — on its own goroutine,
// in lock step with the reader: feed returns only when the parser has taken
// every byte handed to it and wants more, so every header the stream so far
// completes has been checked before the bytes go on to Trivy.
type tarWatch struct {
	in   chan []byte   // bytes to parse
	idle chan struct{} // the parser took all of the last bytes
	quit chan struct{} // closed by close: the stream ends here
	done chan struct{} // the parser stopped; err is set
	err  error
	once sync.Once
}

func newTarWatch(check func(*tar.Header) error) *tarWatch {
	w := &tarWatch{in: make(chan []byte), idle: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{})}
	go w.run(check)
	return w
}

func (w *tarWatch) run(check func(*tar.Header) error) {
	defer close(w.done)
	tr := tar.NewReader(&chunkReader{w: w})
	for {
		h, err := tr.Next()
		if err != nil {
			// The end of the archive, the end of the stream, or a
			// malformed archive: Trivy's walker meets the same and reports
			// it. Nothing more to check.
			return
		}
		if err := check(h); err != nil {
			w.err = err
			return
		}
	}
}

// feed hands p to the parser and waits until it has taken all of it. It
// returns the error of a broken limit, then and on every later call.
func (w *tarWatch) feed(p []byte) error {
	select {
	case w.in <- p:
	case <-w.done:
		return w.err
	}
	select {
	case <-w.idle:
		return nil
	case <-w.done:
		return w.err
	}
}

// close ends the parser and waits for its goroutine to return.
func (w *tarWatch) close() {
	w.once.Do(func() { close(w.quit) })
	<-w.done
}

// chunkReader is the parser's side of a tarWatch.
type chunkReader struct {
	w   *tarWatch
	buf []byte
	fed bool // a feed is waiting for idle
}

func (c *chunkReader) Read(p []byte) (int, error) {
	for len(c.buf) == 0 {
		if c.fed {
			c.fed = false
			select {
			case c.w.idle <- struct{}{}:
			default:
			}
		}
		select {
		case b := <-c.w.in:
			c.buf, c.fed = b, true
		case <-c.w.quit:
			return 0, io.EOF
		}
	}
	n := copy(p, c.buf)
	c.buf = c.buf[n:]
	return n, nil
}
