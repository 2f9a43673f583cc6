package s3blob

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/internal/testsvc"
	"github.com/gatehouse/gatehouse/storage"
	"github.com/gatehouse/gatehouse/storage/storagetest"
)

// options are those of a store in bucket of srv.
func options(t *testing.T, srv *testsvc.S3Server, bucket string) Options {
	return Options{
		Endpoint: srv.Endpoint, Bucket: bucket, Region: srv.Region, PathStyle: true,
		AccessKey: srv.AccessKey, SecretKey: srv.SecretKey,
		SpoolDir: t.TempDir(), PartSize: MinPartSize,
	}
}

func open(t *testing.T, opts Options) *Store {
	t.Helper()
	s, err := Open(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestBlobStore(t *testing.T) {
	srv := testsvc.S3(t)
	storagetest.BlobStore(t, func(t *testing.T) storage.BlobStore {
		return open(t, options(t, srv, srv.NewBucket(t)))
	})
}

// Stores under different prefixes of one bucket do not see each other.
func TestBlobStorePrefix(t *testing.T) {
	srv := testsvc.S3(t)
	n := 0
	storagetest.BlobStore(t, func(t *testing.T) storage.BlobStore {
		n++
		opts := options(t, srv, srv.Bucket)
		opts.Prefix = fmt.Sprintf("/replicas/%d", n) // normalised to "replicas/<n>/"
		return open(t, opts)
	})
	// Everything the subtests committed is under their prefixes.
	out, err := open(t, options(t, srv, srv.Bucket)).client.ListObjectsV2(t.Context(), &s3.ListObjectsV2Input{Bucket: &srv.Bucket})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range out.Contents {
		if !strings.HasPrefix(*o.Key, "replicas/") || !strings.Contains(*o.Key, "/blobs/sha256/") {
			t.Errorf("object %s is outside the prefixes", *o.Key)
		}
	}
	if len(out.Contents) == 0 {
		t.Error("no objects under the prefixes")
	}
}

// uploads lists the incomplete multipart uploads of the bucket.
func uploads(t *testing.T, s *Store) []string {
	t.Helper()
	out, err := s.client.ListMultipartUploads(t.Context(), &s3.ListMultipartUploadsInput{Bucket: &s.bucket})
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, u := range out.Uploads {
		keys = append(keys, *u.Key)
	}
	return keys
}

// waitParts waits until the writer's upload holds n parts in S3.
func waitParts(t *testing.T, s *Store, key string, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := s.client.ListMultipartUploads(t.Context(), &s3.ListMultipartUploadsInput{Bucket: &s.bucket, Prefix: &key})
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for _, u := range out.Uploads {
			parts, err := s.client.ListParts(t.Context(), &s3.ListPartsInput{Bucket: &s.bucket, Key: u.Key, UploadId: u.UploadId})
			if err != nil {
				t.Fatal(err)
			}
			got += len(parts.Parts)
		}
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d parts of %s uploaded after 30s, want %d", got, key, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func write(t *testing.T, w storage.BlobWriter, data []byte) {
	t.Helper()
	for p := data; len(p) > 0; {
		n := min(len(p), 1<<20)
		if _, err := w.Write(p[:n]); err != nil {
			t.Fatal(err)
		}
		p = p[n:]
	}
}

func notFound(t *testing.T, s *Store, d v1.Hash, when string) {
	t.Helper()
	if r, _, err := s.Open(t.Context(), d); !errors.Is(err, storage.ErrNotFound) {
		if r != nil {
			r.Close()
		}
		t.Errorf("%s: Open = %v, want ErrNotFound", when, err)
	}
	if _, err := s.Stat(t.Context(), d); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("%s: Stat = %v, want ErrNotFound", when, err)
	}
	if err := s.Walk(t.Context(), func(h v1.Hash, _ int64) error {
		if h == d {
			return fmt.Errorf("walk found %s", d)
		}
		return nil
	}); err != nil {
		t.Errorf("%s: %v", when, err)
	}
}

// A blob of 3.5 parts goes up part by part while it is written, is
// nowhere to be read until Commit, and reads back whole afterwards.
func TestMultipart(t *testing.T) {
	srv := testsvc.S3(t)
	s := open(t, options(t, srv, srv.Bucket))
	data, d := storagetest.Blob(MinPartSize*7/2, 42)
	key, _ := s.key(d)
	w, err := s.Create(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	follower, err := w.Partial()
	if err != nil {
		t.Fatal(err)
	}
	defer follower.Close()
	write(t, w, data[:MinPartSize*3])
	// The parts are uploaded before Commit, alongside the writes.
	waitParts(t, s, key, 3)
	notFound(t, s, d, "with 3 parts uploaded")
	if got, err := io.ReadAll(follower); err != nil || !bytes.Equal(got, data[:MinPartSize*3]) {
		t.Fatalf("Partial read %d bytes (%v) of %d written", len(got), err, MinPartSize*3)
	}
	write(t, w, data[MinPartSize*3:])
	notFound(t, s, d, "all written, before Commit")
	if err := w.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := uploads(t, s); len(got) != 0 {
		t.Errorf("uploads after Commit: %v", got)
	}
	if ents, _ := os.ReadDir(s.spool); len(ents) != 0 {
		t.Errorf("spool files after Commit: %v", ents)
	}
	r, size, err := s.Open(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got, err := io.ReadAll(r)
	if err != nil || size != int64(len(data)) || !bytes.Equal(got, data) {
		t.Fatalf("Open: size %d, read %d bytes (%v), want %d", size, len(got), err, len(data))
	}
	// ReadAt across the boundary of parts 2 and 3.
	p := make([]byte, 1000)
	off := int64(MinPartSize*2 - 500)
	if n, err := r.ReadAt(p, off); n != len(p) || err != nil || !bytes.Equal(p, data[off:off+1000]) {
		t.Errorf("ReadAt(%d) = %d, %v", off, n, err)
	}
	head, err := s.client.HeadObject(t.Context(), &s3.HeadObjectInput{Bucket: &s.bucket, Key: &key})
	if err != nil {
		t.Fatal(err)
	}
	if etag := aws.ToString(head.ETag); !strings.HasSuffix(strings.Trim(etag, `"`), "-4") {
		t.Errorf("ETag %s is not that of 4 parts", etag)
	}
	// The follower goes on reading the rest, after Commit removed the spool file.
	if got, err := io.ReadAll(follower); err != nil || !bytes.Equal(got, data[MinPartSize*3:]) {
		t.Errorf("Partial after Commit read %d bytes (%v), want %d", len(got), err, len(data)-MinPartSize*3)
	}
}

// Abort after parts went up leaves no upload, no object and no spool file.
func TestAbort(t *testing.T) {
	srv := testsvc.S3(t)
	s := open(t, options(t, srv, srv.Bucket))
	data, d := storagetest.Blob(MinPartSize*2+100, 43)
	key, _ := s.key(d)
	w, err := s.Create(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	write(t, w, data)
	waitParts(t, s, key, 2)
	if err := w.Abort(); err != nil {
		t.Fatal(err)
	}
	if got := uploads(t, s); len(got) != 0 {
		t.Errorf("uploads after Abort: %v", got)
	}
	notFound(t, s, d, "after Abort")
	if ents, _ := os.ReadDir(s.spool); len(ents) != 0 {
		t.Errorf("spool files after Abort: %v", ents)
	}
	if _, err := w.Write([]byte("x")); err == nil {
		t.Error("Write after Abort succeeded")
	}
}

// A committed object is never replaced: a second writer of the same
// digest (a stale one, or one whose bytes are wrong) succeeds without
// touching it, in one request or in parts.
func TestCommitKeepsObject(t *testing.T) {
	srv := testsvc.S3(t)
	s := open(t, options(t, srv, srv.Bucket))
	for _, n := range []int{1000, MinPartSize + 1000} {
		data, d := storagetest.Blob(n, 44)
		w, err := s.Create(t.Context(), d)
		if err != nil {
			t.Fatal(err)
		}
		write(t, w, data)
		if err := w.Commit(t.Context()); err != nil {
			t.Fatal(err)
		}
		other, _ := storagetest.Blob(n, 45)
		w, err = s.Create(t.Context(), d)
		if err != nil {
			t.Fatal(err)
		}
		write(t, w, other)
		if err := w.Commit(t.Context()); err != nil {
			t.Errorf("%d bytes: second Commit: %v", n, err)
		}
		r, _, err := s.Open(t.Context(), d)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(r)
		r.Close()
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("%d bytes: the object was replaced by the second writer", n)
		}
		if got := uploads(t, s); len(got) != 0 {
			t.Errorf("%d bytes: uploads left: %v", n, got)
		}
	}
}

// Uploads older than AbandonedAfter are aborted (at Open and by
// CleanUploads), younger ones and those outside the prefix are not; Open
// removes spool files of an earlier run and nothing else.
func TestCleanUploads(t *testing.T) {
	srv := testsvc.S3(t)
	opts := options(t, srv, srv.Bucket)
	opts.Prefix = "p"
	opts.AbandonedAfter = 2 * time.Second
	admin := open(t, opts)
	start := func(key string) {
		t.Helper()
		if _, err := admin.client.CreateMultipartUpload(t.Context(), &s3.CreateMultipartUploadInput{Bucket: &srv.Bucket, Key: &key}); err != nil {
			t.Fatal(err)
		}
	}
	_, d1 := storagetest.Blob(1, 1)
	_, d2 := storagetest.Blob(2, 2)
	_, d3 := storagetest.Blob(3, 3)
	start("p/blobs/sha256/" + d1.Hex)
	start("q/blobs/sha256/" + d1.Hex) // another store's
	time.Sleep(3 * time.Second)       // S3 reports Initiated in seconds
	start("p/blobs/sha256/" + d2.Hex)

	n, err := admin.CleanUploads(t.Context())
	if err != nil || n != 1 {
		t.Errorf("CleanUploads = %d, %v; want 1", n, err)
	}
	want := []string{"p/blobs/sha256/" + d2.Hex, "q/blobs/sha256/" + d1.Hex}
	if got := uploads(t, admin); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("uploads after CleanUploads = %v, want %v", got, want)
	}

	// Open does the same, and cleans its spool directory.
	start("p/blobs/sha256/" + d3.Hex)
	time.Sleep(3 * time.Second)
	for _, name := range []string{"stale.spool", "other.txt"} {
		if err := os.WriteFile(filepath.Join(opts.SpoolDir, name), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	open(t, opts)
	if got := uploads(t, admin); fmt.Sprint(got) != fmt.Sprint(want[1:]) {
		t.Errorf("uploads after Open = %v, want %v", got, want[1:])
	}
	if _, err := os.Stat(filepath.Join(opts.SpoolDir, "stale.spool")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale spool file after Open: %v", err)
	}
	if _, err := os.Stat(filepath.Join(opts.SpoolDir, "other.txt")); err != nil {
		t.Errorf("Open removed a file that is not a spool file: %v", err)
	}
}

// Walk reports only keys named by a sha256 digest.
func TestWalkSkipsOtherKeys(t *testing.T) {
	srv := testsvc.S3(t)
	opts := options(t, srv, srv.Bucket)
	opts.Prefix = "r/"
	s := open(t, opts)
	data, d := storagetest.Blob(10, 46)
	w, err := s.Create(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	write(t, w, data)
	if err := w.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{
		"r/blobs/sha256/" + strings.ToUpper(d.Hex),
		"r/blobs/sha256/" + d.Hex[:63],
		"r/blobs/sha256/ab/" + d.Hex, // the layout of localblob
		"r/blobs/sha512/" + d.Hex,
		"r/other",
		"blobs/sha256/" + strings.Repeat("0", 64),
	} {
		if _, err := s.client.PutObject(t.Context(), &s3.PutObjectInput{Bucket: &s.bucket, Key: aws.String(key), Body: strings.NewReader("x")}); err != nil {
			t.Fatal(err)
		}
	}
	got := map[v1.Hash]int64{}
	if err := s.Walk(t.Context(), func(h v1.Hash, n int64) error { got[h] = n; return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[d] != 10 {
		t.Errorf("Walk = %v, want only %s", got, d)
	}
}

// While S3 is down every call fails with an error that is not
// ErrNotFound and does not hold the secret; once it is back the same
// Store works again.
func TestS3Down(t *testing.T) {
	srv := testsvc.S3(t)
	s := open(t, options(t, srv, srv.Bucket))
	data, d := storagetest.Blob(1000, 47)
	w, err := s.Create(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	write(t, w, data)
	if err := w.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	pending, err := s.Create(t.Context(), d) // a writer from before the outage
	if err != nil {
		t.Fatal(err)
	}
	write(t, pending, data)

	srv.Stop(t)
	check := func(op string, err error) {
		t.Helper()
		switch {
		case err == nil:
			t.Errorf("%s succeeded with S3 down", op)
		case errors.Is(err, storage.ErrNotFound):
			t.Errorf("%s with S3 down = %v, wants not ErrNotFound", op, err)
		case strings.Contains(err.Error(), srv.SecretKey):
			t.Errorf("%s: the error holds the secret key", op)
		}
	}
	r, _, err := s.Open(t.Context(), d)
	if r != nil {
		r.Close()
	}
	check("Open", err)
	_, err = s.Stat(t.Context(), d)
	check("Stat", err)
	_, err = s.Create(t.Context(), d)
	check("Create", err)
	check("Walk", s.Walk(t.Context(), func(v1.Hash, int64) error { return nil }))
	check("Delete", s.Delete(t.Context(), d))
	check("Commit", pending.Commit(t.Context()))
	pending.Abort()
	_, err = s.CleanUploads(t.Context())
	check("CleanUploads", err)
	_, err = Open(t.Context(), options(t, srv, srv.Bucket))
	check("Open of a store", err)

	srv.Start(t)
	if n, err := s.Stat(t.Context(), d); err != nil || n != 1000 {
		t.Errorf("Stat after restart = %d, %v", n, err)
	}
	data2, d2 := storagetest.Blob(2000, 48)
	w, err = s.Create(t.Context(), d2)
	if err != nil {
		t.Fatal(err)
	}
	write(t, w, data2)
	if err := w.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	r, n, err := s.Open(t.Context(), d2)
	if err != nil || n != 2000 {
		t.Fatalf("Open after restart = %d, %v", n, err)
	}
	r.Close()
}

// A server going down mid-write fails the next Write or the Commit.
func TestUploadErrorFailsWrite(t *testing.T) {
	srv := testsvc.S3(t)
	s := open(t, options(t, srv, srv.Bucket))
	data, d := storagetest.Blob(MinPartSize*3, 49)
	w, err := s.Create(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Abort()
	srv.Stop(t)
	var werr error
	for p := data; len(p) > 0 && werr == nil; p = p[min(len(p), 1<<20):] {
		_, werr = w.Write(p[:min(len(p), 1<<20)])
		time.Sleep(10 * time.Millisecond)
	}
	// The first part's upload fails after the SDK's retries: a later
	// Write or else the Commit reports it.
	if werr == nil {
		werr = w.Commit(t.Context())
	}
	if werr == nil || errors.Is(werr, storage.ErrNotFound) {
		t.Errorf("writing with S3 down: %v", werr)
	}
	srv.Start(t)
}

// Wrong or missing credentials and bad options fail Open, and no error
// or description of the options holds a secret.
func TestCredentials(t *testing.T) {
	srv := testsvc.S3(t)
	opts := options(t, srv, srv.Bucket)
	opts.SessionToken = "token-" + srv.SecretKey[:8]
	for _, s := range []string{opts.String(), fmt.Sprint(opts), fmt.Sprintf("%+v", opts)} {
		if strings.Contains(s, srv.SecretKey) || strings.Contains(s, opts.SessionToken) || strings.Contains(s, srv.AccessKey) {
			t.Errorf("Options print their secrets: %s", s)
		}
	}

	wrong := options(t, srv, srv.Bucket)
	wrong.SecretKey = "not-" + srv.SecretKey
	_, err := Open(t.Context(), wrong)
	if err == nil {
		t.Fatal("Open with a wrong secret key succeeded")
	}
	if strings.Contains(err.Error(), wrong.SecretKey) {
		t.Errorf("error holds the secret key: %v", err)
	}
	t.Logf("wrong secret: %v", err)

	for name, mod := range map[string]func(*Options){
		"no credentials":     func(o *Options) { o.AccessKey, o.SecretKey = "", "" },
		"no secret":          func(o *Options) { o.SecretKey = "" },
		"no bucket":          func(o *Options) { o.Bucket = "" },
		"no spool":           func(o *Options) { o.SpoolDir = "" },
		"small parts":        func(o *Options) { o.PartSize = MinPartSize - 1 },
		"user in endpoint":   func(o *Options) { o.Endpoint = "http://u:" + o.SecretKey + "@127.0.0.1:1" },
		"not http":           func(o *Options) { o.Endpoint = "ftp://127.0.0.1" },
		"missing bucket":     func(o *Options) { o.Bucket = "no-such-bucket" },
		"missing CA file":    func(o *Options) { o.CAFile = filepath.Join(t.TempDir(), "ca.pem") },
		"CA and HTTP client": func(o *Options) { o.CAFile, o.HTTPClient = "x", &http.Client{} },
	} {
		o := options(t, srv, srv.Bucket)
		mod(&o)
		_, err := Open(t.Context(), o)
		switch {
		case err == nil:
			t.Errorf("%s: Open succeeded", name)
		case strings.Contains(err.Error(), srv.SecretKey):
			t.Errorf("%s: error holds the secret key: %v", name, err)
		}
		if name == "no credentials" && err.Error() != "s3: credentials required" {
			t.Errorf("no credentials: %v", err)
		}
	}
}

// Over https the endpoint's certificate is checked against CAFile's roots
// (and the system's), and blobs go up unsigned-payload, in one request or
// in parts.
func TestTLS(t *testing.T) {
	srv := testsvc.S3TLS(t)
	opts := options(t, srv, srv.Bucket)
	if _, err := Open(t.Context(), opts); err == nil {
		t.Fatal("Open trusted a self-signed certificate without CAFile")
	}
	opts.CAFile = srv.CAFile
	s := open(t, opts)
	if !s.unsigned {
		t.Error("payloads are signed over https")
	}
	for _, n := range []int{100, MinPartSize + 100} {
		data, d := storagetest.Blob(n, 50)
		w, err := s.Create(t.Context(), d)
		if err != nil {
			t.Fatal(err)
		}
		write(t, w, data)
		if err := w.Commit(t.Context()); err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
		r, size, err := s.Open(t.Context(), d)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(r)
		r.Close()
		if err != nil || size != int64(n) || !bytes.Equal(got, data) {
			t.Errorf("%d bytes: read %d (%v)", n, len(got), err)
		}
	}
}
