package s3blob

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// cleanSpool creates the spool directory and removes spool files left in
// it by an earlier run.
func (s *Store) cleanSpool() error {
	if err := os.MkdirAll(s.spool, 0o750); err != nil {
		return fmt.Errorf("s3: spool directory: %w", err)
	}
	ents, err := os.ReadDir(s.spool)
	if err != nil {
		return fmt.Errorf("s3: spool directory: %w", err)
	}
	n := 0
	for _, e := range ents {
		if e.Type().IsRegular() && strings.HasSuffix(e.Name(), spoolSuffix) {
			if err := os.Remove(filepath.Join(s.spool, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("s3: removing spool file: %w", err)
			}
			n++
		}
	}
	if n > 0 {
		s.log.Info("s3: removed spool files left by an earlier run", "count", n)
	}
	return nil
}

// Run aborts abandoned uploads every AbandonedAfter/2 (at least every
// minute, at most every hour) until ctx ends; failures are logged.
func (s *Store) Run(ctx context.Context) error {
	every := min(max(s.abandon/2, time.Minute), time.Hour)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if n, err := s.CleanUploads(ctx); err != nil {
			if ctx.Err() == nil {
				s.log.Warn("s3: aborting abandoned uploads failed", "err", err)
			}
		} else if n > 0 {
			s.log.Info("s3: aborted abandoned uploads", "count", n)
		}
	}
}

// CleanUploads aborts the incomplete multipart uploads of blobs under the
// prefix that were started more than AbandonedAfter ago, and returns how
// many it aborted. Younger ones may be in progress on another replica and
// are left alone.
func (s *Store) CleanUploads(ctx context.Context) (int, error) {
	cutoff := s.now().Add(-s.abandon)
	n := 0
	p := s3.NewListMultipartUploadsPaginator(s.client, &s3.ListMultipartUploadsInput{Bucket: &s.bucket, Prefix: aws.String(s.root)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return n, fmt.Errorf("s3: listing uploads: %w", err)
		}
		for _, u := range page.Uploads {
			if u.Key == nil || u.UploadId == nil || u.Initiated == nil || !u.Initiated.Before(cutoff) {
				continue
			}
			_, err := s.client.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: &s.bucket, Key: u.Key, UploadId: u.UploadId})
			if err != nil && !isCode(err, "NoSuchUpload") {
				return n, fmt.Errorf("s3: aborting upload of %s: %w", *u.Key, err)
			}
			n++
		}
	}
	return n, nil
}
