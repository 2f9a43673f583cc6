// Package s3blob is the BlobStore of an S3-compatible object store, for
// replicas that share their blobs. Objects are named by digest:
//
//	<Prefix>blobs/sha256/<hex>
//
// A blob is written to a spool file on local disk, which readers of the
// fetch in flight on this replica follow as it grows, and uploaded as an
// S3 multipart upload while it arrives: each full part goes up as soon as
// it was written. Only Commit, which the caller calls after it verified
// digest and size, completes the upload; until then S3 holds no object
// of that name, so no replica can read an unverified blob. Abort aborts
// the multipart upload; one that a crash left behind is aborted by
// CleanUploads once it is older than Options.AbandonedAfter.
//
// The credentials need s3:GetObject, PutObject, DeleteObject, ListBucket
// (for Walk, and so that a missing blob is a 404 rather than a 403, which
// would be an error, not "not found"), ListBucketMultipartUploads and
// AbortMultipartUpload on the bucket and prefix.
//
// The client is aws-sdk-go-v2: it is maintained by AWS, and it works with
// any S3-compatible server (versitygw in the tests) once request checksums
// and response validation are "when required" (since service/s3 v1.73 it
// otherwise sends CRC trailers that many non-AWS servers refuse). minio-go
// would be smaller, but MinIO's own server project is archived. The SDK's
// deprecated feature/s3/manager is not used (the multipart calls are made
// here), nor its config package: nothing is read implicitly from ~/.aws or
// the environment, every setting comes from Options.
package s3blob

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/storage"
)

// Part sizes and limits of a multipart upload.
const (
	// DefaultPartSize is the part size when Options.PartSize is 0: a blob
	// of up to 10000 parts, 160 GiB, can be written.
	DefaultPartSize = 16 << 20
	// MinPartSize is S3's smallest part (but the last).
	MinPartSize = 5 << 20
	// maxParts is S3's largest part number.
	maxParts = 10000
	// DefaultAbandonedAfter is Options.AbandonedAfter when it is 0.
	DefaultAbandonedAfter = 24 * time.Hour
	// readTimeout is how long the default HTTP client waits for any byte
	// from a connection that owes a response (like the cache's stall
	// timeout for upstreams).
	readTimeout = 2 * time.Minute
)

// Options configure a Store. The zero value of each field is described
// with it; Bucket, SpoolDir and the credentials are required.
type Options struct {
	// Endpoint is the server's URL ("https://s3.example.net:9000"); empty
	// means AWS S3 itself, in Region.
	Endpoint string
	// Bucket holds the blobs; it must exist.
	Bucket string
	// Prefix is put before every key, so that a bucket can be shared. It
	// may be empty; "gatehouse" and "gatehouse/" are the same prefix.
	Prefix string
	// Region signs the requests; empty means "us-east-1" (what most
	// S3-compatible servers expect).
	Region string
	// PathStyle addresses the bucket in the path (endpoint/bucket/key)
	// rather than in the host name (bucket.endpoint/key). Most servers
	// other than AWS need it.
	PathStyle bool
	// AccessKey and SecretKey (and SessionToken, for temporary
	// credentials) sign the requests. They are required: the SDK's
	// default chain (environment, ~/.aws, instance roles) is never
	// consulted, and anonymous access is not supported.
	AccessKey, SecretKey, SessionToken string
	// CAFile names a PEM file of roots trusted for the endpoint's TLS
	// certificate, in addition to the system's. Empty: the system's only.
	// It cannot be combined with HTTPClient.
	CAFile string
	// SpoolDir is a local directory, of this store alone, for the blobs
	// being written (one file each, removed at Commit or Abort). Open
	// creates it and removes spool files an earlier run left in it.
	SpoolDir string
	// PartSize is the size of each part of a multipart upload (at least
	// MinPartSize); 0 means DefaultPartSize. Blobs smaller than one part
	// are uploaded with one PutObject at Commit. A blob can have at most
	// 10000 parts.
	PartSize int64
	// HTTPClient sends the requests; nil means the SDK's default client
	// (with CAFile's roots, when set), which fails a request whose
	// connection stays silent for 2 minutes.
	HTTPClient *http.Client
	// Log receives warnings and cleanup notes; nil discards them.
	Log *slog.Logger
	// AbandonedAfter is the age after which an incomplete multipart upload
	// under Prefix is taken to be abandoned (by a crashed writer) and
	// aborted by CleanUploads. It must exceed the longest blob transfer,
	// since another replica may be uploading right now. 0 means
	// DefaultAbandonedAfter.
	AbandonedAfter time.Duration
}

// String describes the options without their secrets.
func (o Options) String() string {
	return fmt.Sprintf("s3blob.Options{Endpoint:%q Bucket:%q Prefix:%q Region:%q PathStyle:%t AccessKey:%s SpoolDir:%q PartSize:%d}",
		o.Endpoint, o.Bucket, o.Prefix, o.Region, o.PathStyle, redacted(o.AccessKey), o.SpoolDir, o.PartSize)
}

// LogValue logs the options without their secrets.
func (o Options) LogValue() slog.Value { return slog.StringValue(o.String()) }

func redacted(s string) string {
	if s == "" {
		return `""`
	}
	return "[redacted]"
}

// Store is a BlobStore in an S3 bucket. It is safe for concurrent use.
type Store struct {
	client   *s3.Client
	bucket   string
	prefix   string // "" or ending in "/"
	root     string // prefix + "blobs/sha256/"
	spool    string
	partSize int64
	unsigned bool // TLS endpoint: payloads are not hashed for signing
	log      *slog.Logger
	abandon  time.Duration
	now      func() time.Time
}

var _ storage.BlobStore = (*Store)(nil)

// spoolSuffix ends the name of every spool file, so that Open removes
// only what the store wrote.
const spoolSuffix = ".spool"

// Open checks opts, makes the client, checks that the bucket can be
// reached (so that a wrong endpoint, bucket or key is an error at start,
// not on the first pull), removes spool files of an earlier run and
// aborts abandoned uploads (a failure of that is logged, not returned).
func Open(ctx context.Context, opts Options) (*Store, error) {
	if opts.Bucket == "" {
		return nil, errors.New("s3: bucket required")
	}
	if opts.AccessKey == "" && opts.SecretKey == "" {
		return nil, errors.New("s3: credentials required")
	}
	if opts.AccessKey == "" || opts.SecretKey == "" {
		return nil, errors.New("s3: access key and secret key go together")
	}
	if opts.SpoolDir == "" {
		return nil, errors.New("s3: spool directory required")
	}
	switch {
	case opts.PartSize == 0:
		opts.PartSize = DefaultPartSize
	case opts.PartSize < MinPartSize:
		return nil, fmt.Errorf("s3: part size %d is below S3's minimum of %d", opts.PartSize, MinPartSize)
	}
	if opts.AbandonedAfter <= 0 {
		opts.AbandonedAfter = DefaultAbandonedAfter
	}
	if opts.Region == "" {
		opts.Region = "us-east-1"
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	unsigned := true // AWS itself is reached with https
	if opts.Endpoint != "" {
		u, err := url.Parse(opts.Endpoint)
		switch {
		case err != nil:
			return nil, errors.New("s3: endpoint is not a URL") // err may quote the URL
		case u.User != nil:
			return nil, errors.New("s3: credentials belong in the access and secret key, not in the endpoint URL")
		case u.Scheme != "http" && u.Scheme != "https" || u.Host == "":
			return nil, fmt.Errorf("s3: endpoint %q is not an http(s) URL", u.Redacted())
		}
		unsigned = u.Scheme == "https"
	}
	var httpClient s3.HTTPClient
	switch {
	case opts.HTTPClient != nil && opts.CAFile != "":
		return nil, errors.New("s3: CAFile and HTTPClient exclude each other: put the roots in the client's transport")
	case opts.HTTPClient != nil:
		httpClient = opts.HTTPClient
	default:
		// A server that accepts a request and then says nothing fails it
		// (the SDK retries) instead of holding a Commit forever: the
		// cache's writes have no deadline of their own.
		// The read deadline of an idle connection runs from its last
		// response: closing idle connections after a quarter of it leaves
		// the next request on one at least three quarters.
		var pool *x509.CertPool
		if opts.CAFile != "" {
			var err error
			if pool, err = rootsWith(opts.CAFile); err != nil {
				return nil, err
			}
		}
		httpClient = awshttp.NewBuildableClient().WithReadTimeout(readTimeout).WithTransportOptions(func(tr *http.Transport) {
			tr.IdleConnTimeout = readTimeout / 4
			if pool != nil {
				if tr.TLSClientConfig == nil {
					tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
				}
				tr.TLSClientConfig.RootCAs = pool
			}
		})
	}

	s3opts := s3.Options{
		Region:                     opts.Region,
		Credentials:                credentials.NewStaticCredentialsProvider(opts.AccessKey, opts.SecretKey, opts.SessionToken),
		UsePathStyle:               opts.PathStyle,
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
	}
	if opts.Endpoint != "" {
		s3opts.BaseEndpoint = aws.String(opts.Endpoint)
	}
	if httpClient != nil {
		s3opts.HTTPClient = httpClient
	}
	prefix := strings.TrimLeft(opts.Prefix, "/")
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	s := &Store{
		client:   s3.New(s3opts),
		bucket:   opts.Bucket,
		prefix:   prefix,
		root:     prefix + "blobs/sha256/",
		spool:    opts.SpoolDir,
		partSize: opts.PartSize,
		unsigned: unsigned,
		log:      opts.Log,
		abandon:  opts.AbandonedAfter,
		now:      time.Now,
	}
	if err := s.cleanSpool(); err != nil {
		return nil, err
	}
	if _, err := s.client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: &s.bucket}); err != nil {
		return nil, fmt.Errorf("s3: bucket %q: %w", s.bucket, err)
	}
	if n, err := s.CleanUploads(ctx); err != nil {
		s.log.Warn("s3: aborting abandoned uploads failed", "err", err)
	} else if n > 0 {
		s.log.Info("s3: aborted abandoned uploads", "count", n)
	}
	return s, nil
}

// rootsWith returns the system's roots and those of a PEM file.
func rootsWith(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("s3: CA file: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("s3: CA file %s holds no PEM certificate", file)
	}
	return pool, nil
}

// key returns the object key of a blob.
func (s *Store) key(d v1.Hash) (string, error) {
	if d.Algorithm != "sha256" || !isHex64(d.Hex) {
		return "", fmt.Errorf("s3blob: unsupported digest %q", d)
	}
	return s.root + d.Hex, nil
}

func isHex64(h string) bool {
	if len(h) != 64 {
		return false
	}
	for _, c := range h {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// isNotFound reports whether err says the object does not exist. A
// missing bucket is not a missing blob: it is a broken configuration.
func isNotFound(err error) bool {
	var nsk *types.NoSuchKey
	var nf *types.NotFound
	if errors.As(err, &nsk) || errors.As(err, &nf) {
		return true
	}
	return isCode(err, "NoSuchKey", "NotFound")
}

// isCode reports whether err is an S3 error with one of the codes.
func isCode(err error, codes ...string) bool {
	var ae smithy.APIError
	if !errors.As(err, &ae) {
		return false
	}
	for _, c := range codes {
		if ae.ErrorCode() == c {
			return true
		}
	}
	return false
}

// isStatus reports whether err is an HTTP response with the status.
func isStatus(err error, status int) bool {
	var re *awshttp.ResponseError
	return errors.As(err, &re) && re.HTTPStatusCode() == status
}

// blobErr wraps an error of op on blob d: storage.ErrNotFound for a
// missing object, the S3 error otherwise (never "not found" for a server
// that could not answer).
func blobErr(op string, d v1.Hash, err error) error {
	if isNotFound(err) {
		return fmt.Errorf("s3blob: blob %s: %w", d, storage.ErrNotFound)
	}
	return fmt.Errorf("s3blob: %s %s: %w", op, d, err)
}

// Stat returns the size of a committed blob (HeadObject).
func (s *Store) Stat(ctx context.Context, dgst v1.Hash) (int64, error) {
	key, err := s.key(dgst)
	if err != nil {
		return 0, err
	}
	out, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &s.bucket, Key: &key})
	if err != nil {
		return 0, blobErr("stat", dgst, err)
	}
	return aws.ToInt64(out.ContentLength), nil
}

// Delete removes a committed blob (DeleteObject).
func (s *Store) Delete(ctx context.Context, dgst v1.Hash) error {
	key, err := s.key(dgst)
	if err != nil {
		return err
	}
	_, err = s.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &s.bucket, Key: &key})
	if err != nil && !isNotFound(err) {
		return fmt.Errorf("s3blob: delete %s: %w", dgst, err)
	}
	return nil
}

// Walk lists the objects under the prefix (ListObjectsV2) and calls fn
// for each one named by a sha256 digest; other keys are skipped.
func (s *Store) Walk(ctx context.Context, fn func(dgst v1.Hash, size int64) error) error {
	p := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{Bucket: &s.bucket, Prefix: aws.String(s.root)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("s3blob: listing blobs: %w", err)
		}
		for _, o := range page.Contents {
			hex, ok := strings.CutPrefix(aws.ToString(o.Key), s.root)
			if !ok || !isHex64(hex) {
				continue
			}
			if err := fn(v1.Hash{Algorithm: "sha256", Hex: hex}, aws.ToInt64(o.Size)); err != nil {
				return err
			}
		}
	}
	return nil
}

// Open returns a reader of a committed blob. Its first GetObject is sent
// here (and answers the size); Read streams it, ReadAt sends ranged GETs.
func (s *Store) Open(ctx context.Context, dgst v1.Hash) (storage.BlobReader, int64, error) {
	key, err := s.key(dgst)
	if err != nil {
		return nil, 0, err
	}
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: &s.bucket, Key: &key})
	if err != nil {
		return nil, 0, blobErr("open", dgst, err)
	}
	size := aws.ToInt64(out.ContentLength)
	if size < 0 {
		out.Body.Close()
		return nil, 0, fmt.Errorf("s3blob: open %s: no Content-Length", dgst)
	}
	return newReader(ctx, s, dgst, key, size, out.Body), size, nil
}

// putOptions are the per-operation options of requests that carry a
// blob's bytes: over TLS they are sent as UNSIGNED-PAYLOAD, sparing a
// second SHA-256 of every byte (the caller verified the digest; TLS
// protects the transfer). Over plain http the payload stays signed.
func (s *Store) putOptions() []func(*s3.Options) {
	if !s.unsigned {
		return nil
	}
	return []func(*s3.Options){s3.WithAPIOptions(v4.SwapComputePayloadSHA256ForUnsignedPayloadMiddleware)}
}
