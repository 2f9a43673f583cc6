package scan

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"sync"
	"sync/atomic"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	ftypes "github.com/aquasecurity/trivy/pkg/fanal/types"

	"github.com/gatehouse/gatehouse/gate"
	"github.com/gatehouse/gatehouse/internal/verify"
)

// image adapts a v1.Image to what Trivy's image artifact wants (a name and an
// ID next to the v1.Image methods) and puts the limits on every layer it reads.
type image struct {
	v1.Image
	name   string
	limits limits

	read atomic.Int64 // uncompressed bytes read, for limits.image
	// release overrides releaseSize (tests).
	release int

	mu     sync.Mutex
	open   map[*limitReader]struct{} // limited streams not closed yet
	broken map[string]error          // diffID → the first limit it broke
}

// breach records that layer diffID broke a limit, or failed while read
// (its content is not what its diffID says, or the stream broke). Trivy
// drops some read errors (it reads a layer's tail after the tar's end and
// ignores the result), so the error is kept here as well and checked
// before the layer's analysis is cached and before the scan returns.
func (i *image) breach(diffID string, err error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.broken == nil {
		i.broken = map[string]error{}
	}
	if _, ok := i.broken[diffID]; !ok {
		i.broken[diffID] = err
	}
}

// breached returns the error of layer diffID, or with diffID "" of any
// layer; nil when none failed.
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

// LayerByDiffID is how Trivy reads a layer it has no analysis of, which it
// then caches under h: the layer's content is checked against h as it is
// read (see limitReader).
func (i *image) LayerByDiffID(h v1.Hash) (v1.Layer, error) {
	l, err := i.Image.LayerByDiffID(h)
	if err != nil {
		return nil, err
	}
	return &layer{Layer: l, img: i, diffID: h}, nil
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
	img    *image
	diffID v1.Hash // the diffID asked for; zero: the layer's own
}

func (l *layer) Uncompressed() (io.ReadCloser, error) {
	rc, err := l.Layer.Uncompressed()
	if err != nil {
		return nil, err
	}
	diffID := l.diffID
	if diffID == (v1.Hash{}) {
		if diffID, err = l.DiffID(); err != nil {
			rc.Close()
			return nil, err
		}
	}
	if diffID.Algorithm != "sha256" {
		rc.Close()
		return nil, fmt.Errorf("layer %s: diffID algorithm %q is not supported", diffID, diffID.Algorithm)
	}
	vr := verify.ReadCloser(rc, -1, diffID)
	lr := &limitReader{rc: vr, vr: vr, diffID: diffID.String(), want: diffID, lim: l.img.limits, img: l.img,
		out: make(chan []byte, outChunks), quit: make(chan struct{}), done: make(chan struct{})}
	l.img.track(lr, true)
	go lr.watch()
	return lr, nil
}

// limits are gate.scanLimits as the scanner applies them; 0 is no limit.
type limits struct {
	bytes int64 // uncompressed bytes of a layer, and the sum of its entries' sizes
	files int64 // tar entries of a layer
	image int64 // uncompressed bytes of all the layers a scan reads
}

// releaseSize is how many checked bytes the watcher gathers before it hands
// them to the reader: large enough that the hand-over costs little per
// byte, small enough to bound the read-ahead (outChunks of them).
const (
	releaseSize = 32 << 10
	outChunks   = 4
)

// limitReader is the layer stream Trivy reads. A watcher goroutine reads
// the layer ahead of it and parses it with archive/tar — the parser Trivy's
// walker uses, so both see the same entries — and hands bytes on only once
// the parser has asked for more input after them: every tar header they
// complete has been checked by then. The stream fails, before Trivy sees
// the header that breaks a limit, on: more than limits.bytes of stream,
// more than limits.files entries, or entries whose declared sizes add up to
// more than limits.bytes. The declared sizes count because archive/tar
// expands the holes of a sparse file: a few bytes of stream can declare a
// terabyte file, which Trivy would copy to a temporary file.
//
// The watcher also hashes the stream and fails its end when the digest is
// not the diffID the layer was read as: Trivy caches a layer's analysis
// under the diffID the image config declares, so an image whose config lies
// would otherwise poison the analysis of the layer it names for every
// image that shares it.
type limitReader struct {
	rc     io.ReadCloser  // vr
	vr     *verify.Reader // the uncompressed stream, checked against want at its end
	diffID string
	want   v1.Hash // the diffID the content must hash to
	lim    limits
	img    *image

	out  chan []byte   // checked bytes, in order; closed after the last
	quit chan struct{} // closed by Close
	done chan struct{} // closed when the watcher has returned
	err  error         // why out was closed (nil: the layer's end); set before it is

	buf       []byte // the part of a chunk not read yet
	closeOnce sync.Once
	closeErr  error
}

func (r *limitReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		select {
		case b, ok := <-r.out:
			if !ok {
				if r.err != nil {
					return 0, r.err
				}
				return 0, io.EOF
			}
			r.buf = b
		case <-r.quit:
			return 0, errQuit
		}
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// Close stops the watcher, then closes the layer stream.
func (r *limitReader) Close() error {
	r.closeOnce.Do(func() {
		close(r.quit)
		<-r.done
		r.closeErr = r.rc.Close()
		r.img.track(r, false)
	})
	return r.closeErr
}

// watch is the watcher goroutine: it feeds the layer to archive/tar through
// a teeReader, then passes on whatever follows the archive (Trivy reads a
// layer to its end).
func (r *limitReader) watch() {
	defer close(r.done)
	t := &teeReader{r: r}
	err := t.parse()
	if err == nil {
		// The end of the archive, or a malformed one that Trivy's walker
		// will report: pass on the rest of the stream unparsed.
		err = t.drain()
	}
	if err == errQuit {
		return
	}
	if err != nil {
		// A layer that broke a limit or is not what its diffID says is
		// never cached: see image.breach.
		r.img.breach(r.diffID, err)
	}
	r.err = err
	close(r.out)
}

// errQuit: the reader was closed.
var errQuit = errors.New("layer stream closed")

// teeReader is archive/tar's input on the watcher goroutine. It reads the
// layer, counts it, and keeps what the parser took in pending until it is
// checked.
type teeReader struct {
	r        *limitReader
	n        int64  // stream bytes read
	pending  []byte // bytes read and not handed on yet
	last     int    // how many of them the last read that returned any gave
	entries  int64
	declared int64
	rcErr    error // the layer stream's own error, io.EOF included
	stop     error // a limit error, or errQuit
}

// parse runs archive/tar over the layer, checking every header. It returns
// nil when the parser stops on its own (the end of the archive, or a
// malformed archive), else the limit or stream error that stopped it.
func (t *teeReader) parse() error {
	tr := tar.NewReader(t)
	for {
		h, err := tr.Next()
		if t.stop != nil {
			return t.stop
		}
		if err != nil {
			if t.rcErr != nil && t.rcErr != io.EOF {
				return t.rcErr
			}
			return nil
		}
		if err := t.check(h); err != nil {
			return err
		}
	}
}

func (t *teeReader) check(h *tar.Header) error {
	lim, diffID := t.r.lim, t.r.diffID
	t.entries++
	if lim.files > 0 && t.entries > lim.files {
		return &gate.LimitError{Limit: gate.LimitLayerFiles, Layer: diffID, Max: lim.files}
	}
	if h.Size > 0 {
		t.declared += h.Size
	}
	if lim.bytes > 0 && (h.Size > lim.bytes || t.declared > lim.bytes) {
		return &gate.LimitError{Limit: gate.LimitLayerSize, Layer: diffID, Max: lim.bytes}
	}
	return nil
}

// Read hands on the checked part of pending once it is large enough.
// archive/tar reads exactly the blocks it needs, and Next returns a header
// right after the read that completes it, which the watcher checks before it
// calls Next again. So everything in pending but the bytes of the last read
// that returned any is checked; those are held back, as without them the
// header they complete cannot be parsed by Trivy either.
func (t *teeReader) Read(p []byte) (int, error) {
	if t.stop != nil {
		return 0, t.stop
	}
	if t.rcErr != nil {
		return 0, t.rcErr
	}
	if checked := len(t.pending) - t.last; checked >= t.releaseSize() {
		rest := make([]byte, t.last, releaseSize+t.last+len(p))
		copy(rest, t.pending[checked:])
		if !t.send(t.pending[:checked]) {
			t.stop = errQuit
			return 0, t.stop
		}
		t.pending = rest
	}
	n, err := t.r.rc.Read(p)
	if err := t.count(p[:n]); err != nil {
		t.stop = err
		return 0, err
	}
	if n > 0 {
		t.pending = append(t.pending, p[:n]...)
		t.last = n
	}
	if err != nil {
		err = t.streamErr(err)
		t.rcErr = err
	}
	return n, err
}

// streamErr is the layer stream's error as the gate learns it: content
// that does not hash to its diffID is a *gate.LayerError naming what it
// is instead (the gate then refuses every image claiming it).
func (t *teeReader) streamErr(err error) error {
	if errors.Is(err, verify.ErrDigestMismatch) {
		return &gate.LayerError{Layer: t.r.want.String(), Actual: t.r.vr.Digest().String()}
	}
	return err
}

func (t *teeReader) releaseSize() int {
	if n := t.r.img.release; n > 0 {
		return n
	}
	return releaseSize
}

// count counts b, the bytes just read (the verify.Reader under them
// hashes them).
func (t *teeReader) count(b []byte) error {
	n := len(b)
	t.n += int64(n)
	if lim := t.r.lim.bytes; lim > 0 && t.n > lim {
		return &gate.LimitError{Limit: gate.LimitLayerSize, Layer: t.r.diffID, Max: lim}
	}
	if lim := t.r.lim.image; lim > 0 && t.r.img.read.Add(int64(n)) > lim {
		return &gate.LimitError{Limit: gate.LimitImageSize, Layer: t.r.diffID, Max: lim}
	}
	return nil
}

// drain hands on pending and the rest of the layer stream, counted.
func (t *teeReader) drain() error {
	if len(t.pending) > 0 {
		if !t.send(t.pending) {
			return errQuit
		}
		t.pending = nil
	}
	for t.rcErr == nil {
		b := make([]byte, releaseSize)
		n, err := t.r.rc.Read(b)
		if err := t.count(b[:n]); err != nil {
			return err
		}
		if n > 0 && !t.send(b[:n]) {
			return errQuit
		}
		if err != nil {
			t.rcErr = t.streamErr(err)
		}
	}
	if t.rcErr != io.EOF {
		return t.rcErr
	}
	return nil
}

// send hands b to the reader; false when the reader was closed.
func (t *teeReader) send(b []byte) bool {
	select {
	case t.r.out <- b:
		return true
	case <-t.r.quit:
		return false
	}
}
