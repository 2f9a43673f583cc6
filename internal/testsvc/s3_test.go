package testsvc

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
)

func vgwClient(srv *S3Server, secret string) *s3.Client {
	return s3.New(s3.Options{
		BaseEndpoint:               aws.String(srv.Endpoint),
		Region:                     srv.Region,
		Credentials:                credentials.NewStaticCredentialsProvider(srv.AccessKey, secret, ""),
		UsePathStyle:               true,
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
	})
}

// The server stores and serves objects in the buckets it was given, and
// keeps them across Stop and Start.
func TestS3(t *testing.T) { testS3(t) }

// The same with the metadata in a sidecar directory, as on file systems
// without extended attributes.
func TestS3Sidecar(t *testing.T) {
	vgwForceSidecar = true
	defer func() { vgwForceSidecar = false }()
	srv := testS3(t)
	if srv.Sidecar == "" {
		t.Fatal("no sidecar directory")
	}
	ents, err := os.ReadDir(srv.Sidecar)
	if err != nil || len(ents) == 0 {
		t.Errorf("nothing in the sidecar directory (%v)", err)
	}
}

func testS3(t *testing.T) *S3Server {
	srv := S3(t)
	t.Logf("versitygw at %s, sidecar %q", srv.Endpoint, srv.Sidecar)
	c := vgwClient(srv, srv.SecretKey)
	ctx := t.Context()
	other := srv.NewBucket(t)
	for _, b := range []string{srv.Bucket, other} {
		if _, err := c.PutObject(ctx, &s3.PutObjectInput{Bucket: &b, Key: aws.String("a/b"), Body: bytes.NewReader([]byte("hello"))}); err != nil {
			t.Fatalf("PutObject to %s: %v", b, err)
		}
	}
	if _, err := os.Stat(filepath.Join(srv.Dir, other, "a", "b")); err != nil {
		t.Errorf("object is not a file under Dir: %v", err)
	}
	srv.Stop(t)
	if _, err := c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &srv.Bucket, Key: aws.String("a/b")}); err == nil {
		t.Error("HeadObject succeeded on a stopped server")
	}
	srv.Start(t)
	out, err := c.GetObject(ctx, &s3.GetObjectInput{Bucket: &srv.Bucket, Key: aws.String("a/b")})
	if err != nil {
		t.Fatalf("GetObject after restart: %v", err)
	}
	got, err := io.ReadAll(out.Body)
	out.Body.Close()
	if err != nil || string(got) != "hello" {
		t.Errorf("GetObject after restart = %q, %v", got, err)
	}
	var nsk *types.NoSuchKey
	if _, err := c.GetObject(ctx, &s3.GetObjectInput{Bucket: &srv.Bucket, Key: aws.String("missing")}); !errors.As(err, &nsk) {
		t.Errorf("GetObject of a missing key: %v, want NoSuchKey", err)
	}
	bad := vgwClient(srv, "wrong")
	if _, err := bad.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: &srv.Bucket}); err == nil {
		t.Error("HeadBucket with a wrong secret succeeded")
	}
	return srv
}
