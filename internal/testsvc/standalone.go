package testsvc

// Entry points that need no testing.TB, for programs such as the
// benchmark (bench/, a package main) that start the same services:
//
//	pg, err := testsvc.StartPostgres()
//	defer pg.Close()
//	dsn, err := pg.CreateDatabase("bench_1")
//
//	s3, err := testsvc.StartS3(dir)     // one empty bucket, s3.Bucket
//	defer s3.Close()
//	bucket, err := s3.CreateBucket()

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"time"
)

// StartPostgres starts a PostgreSQL server of the caller's own (as
// PostgresServer does for a test). Close stops it and removes its
// directory; should the program die first, a watchdog does both.
func StartPostgres() (*Server, error) {
	return startServer(false)
}

var dbNameRE = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// CreateDatabase creates a new, empty database name (lower-case letters,
// digits and underscores) on s and returns its connection URL.
func (s *Server) CreateDatabase(name string) (string, error) {
	if !dbNameRE.MatchString(name) {
		return "", fmt.Errorf("testsvc: bad database name %q", name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s.mu.Lock()
	version := s.version
	s.mu.Unlock()
	create := "CREATE DATABASE " + name
	if version >= 150000 {
		// Copying the template's files is about twice as fast as
		// WAL-logging them (the default since 15), and nothing here
		// needs the WAL.
		create += " STRATEGY FILE_COPY"
	}
	if err := s.admin(ctx, create); err != nil {
		return "", fmt.Errorf("testsvc: create database %s: %w", name, err)
	}
	return s.DSN(name), nil
}

// Close stops s at once and removes its directory. It is safe to call
// more than once.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var err error
	if s.running {
		err = s.pgctl("stop", "-m", "immediate")
		s.running = false
	}
	if s.root != "" {
		os.RemoveAll(s.root)
	}
	return err
}

// StartS3 starts a versitygw serving a new directory under dir (which
// must exist), with one empty bucket, as S3 does for a test. Close stops
// it and removes what it made under dir.
func StartS3(dir string) (*S3Server, error) {
	bin := versitygwPath
	if _, err := os.Stat(bin); err != nil {
		if bin, err = exec.LookPath("versitygw"); err != nil {
			return nil, errors.New("testsvc: versitygw not found at " + versitygwPath + " or in PATH: run scripts/deps.sh (as root) to install it")
		}
	}
	root, err := os.MkdirTemp(dir, "versitygw-")
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(root)
		}
	}()
	s := &S3Server{
		AccessKey: "GH" + vgwRandomHex(9),
		SecretKey: vgwRandomHex(20),
		Region:    "us-east-1",
		Dir:       filepath.Join(root, "data"),
		bin:       bin,
		logPath:   filepath.Join(root, "versitygw.log"),
	}
	if err := os.Mkdir(s.Dir, 0o750); err != nil {
		return nil, err
	}
	if !vgwHasXattrs(s.Dir) {
		s.Sidecar = filepath.Join(root, "side")
		if err := os.Mkdir(s.Sidecar, 0o750); err != nil {
			return nil, err
		}
	}
	if s.port, err = vgwFreePort(); err != nil {
		return nil, err
	}
	s.Endpoint = "http://127.0.0.1:" + strconv.Itoa(s.port)
	s.client = &http.Client{Timeout: time.Second}
	s.mu.Lock()
	err = s.startLocked()
	s.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("testsvc: starting versitygw: %w (log: %s)", err, s.logPath)
	}
	if s.Bucket, err = s.CreateBucket(); err != nil {
		s.Close()
		return nil, err
	}
	ok = true
	return s, nil
}

// CreateBucket makes another empty bucket and returns its name.
func (s *S3Server) CreateBucket() (string, error) {
	name := fmt.Sprintf("bucket-%d", s.buckets.Add(1))
	if err := os.Mkdir(filepath.Join(s.Dir, name), 0o755); err != nil {
		return "", err
	}
	return name, nil
}

// Close stops the server and removes its directory (that of a server of
// StartS3). It is safe to call more than once.
func (s *S3Server) Close() error {
	s.mu.Lock()
	err := s.stopLocked()
	s.mu.Unlock()
	if s.CAFile == "" && s.Dir != "" {
		// A server of StartS3: Dir is <root>/data.
		os.RemoveAll(filepath.Dir(s.Dir))
	}
	return err
}
