package config

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"
)

// Storage chooses where blobs and records live. Unset (the default): blobs
// in dataDir/blobs and records in bbolt files in dataDir, for one replica
// with no other service. Several replicas share an S3-compatible object
// store (blobs) and a PostgreSQL database (records and coordination); both
// must then be set, together with cluster.
type Storage struct {
	// Blobs is where verified blobs are kept.
	Blobs BlobStorage `yaml:"blobs"`
	// Metadata is where manifests, tag mappings, blob records, verdicts,
	// reports and the other records are kept.
	Metadata MetadataStorage `yaml:"metadata"`
}

// Storage types.
const (
	StorageLocal    = "local"
	StorageS3       = "s3"
	StorageBbolt    = "bbolt"
	StoragePostgres = "postgres"
)

// BlobStorage configures the blob store.
type BlobStorage struct {
	// Type is "local" (default: dataDir/blobs) or "s3".
	Type string `yaml:"type"`
	// S3 configures the object store when type is "s3".
	S3 S3 `yaml:"s3"`
	// LocalTier, when its maxSize is set, keeps a per-replica copy of
	// blobs read from the object store in dataDir/tier, so that warm pulls
	// do not pay the object store's latency. Copies are digest-verified
	// before use and evicted least recently used first. Only with type s3.
	LocalTier LocalTier `yaml:"localTier"`
}

// S3 configures an S3-compatible object store (AWS S3, GCS's XML API, Ceph
// RGW, SeaweedFS, MinIO, versitygw...).
type S3 struct {
	// Endpoint is the URL of the S3 API, e.g. "https://s3.eu-west-1.amazonaws.com"
	// or "http://minio.storage:9000". Required.
	Endpoint string `yaml:"endpoint"`
	// Bucket holds the blobs (it must exist). Required.
	Bucket string `yaml:"bucket"`
	// Prefix is prepended to every object key, e.g. "gatehouse/". Default "".
	Prefix string `yaml:"prefix,omitempty"`
	// Region of the bucket. Default "us-east-1".
	Region string `yaml:"region,omitempty"`
	// PathStyle addresses the bucket as endpoint/bucket instead of
	// bucket.endpoint (most non-AWS servers need it). Default false.
	PathStyle bool `yaml:"pathStyle,omitempty"`
	// AccessKeyIDFile and SecretAccessKeyFile hold the credentials (e.g. a
	// mounted Secret). Unset: the environment variables AWS_ACCESS_KEY_ID
	// and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN). One of the two
	// ways is required; the keys are never logged.
	AccessKeyIDFile     string `yaml:"accessKeyIdFile,omitempty"`
	SecretAccessKeyFile string `yaml:"secretAccessKeyFile,omitempty"`
	// CAFile is a PEM bundle of extra CAs trusted for the endpoint's TLS.
	CAFile string `yaml:"caFile,omitempty"`
	// PartSize is the size of a multipart upload's parts. Default 16MiB;
	// at least 5MiB (S3's minimum).
	PartSize ByteSize `yaml:"partSize,omitempty"`
}

// LocalTier configures the per-replica disk tier in front of an object store.
type LocalTier struct {
	// MaxSize bounds the tier, e.g. "20GiB". 0 or unset: no tier.
	MaxSize ByteSize `yaml:"maxSize"`
}

// MetadataStorage configures the record store.
type MetadataStorage struct {
	// Type is "bbolt" (default: files in dataDir) or "postgres".
	Type string `yaml:"type"`
	// Postgres configures the database when type is "postgres".
	Postgres Postgres `yaml:"postgres"`
}

// Postgres configures a PostgreSQL database. The schema is created and
// migrated at start.
type Postgres struct {
	// DSNFile holds the connection string (a mounted Secret), e.g.
	// "postgres://gatehouse:PASSWORD@db:5432/gatehouse?sslmode=verify-full".
	// Unset: the environment variable GATEHOUSE_POSTGRES_DSN. One of the
	// two is required; the string is never logged.
	DSNFile string `yaml:"dsnFile,omitempty"`
	// MaxConns bounds the connections of one replica. Default 16.
	MaxConns int `yaml:"maxConns,omitempty"`
}

// Cluster configures the replicas of one gatehouse sharing S3 and
// PostgreSQL: they fetch each blob from upstream once for all of them, and
// a replica without the blob streams it from the one fetching it, over a
// peer listener of its own.
type Cluster struct {
	// PeerListen is the address of the peer listener. Default ":5001"
	// when shared storage is configured.
	PeerListen string `yaml:"peerListen,omitempty"`
	// Advertise is the URL other replicas reach this one's peer listener
	// at, e.g. "http://${POD_IP}:5001". Environment variables in it are
	// expanded. Required with shared storage.
	Advertise string `yaml:"advertise,omitempty"`
	// SecretFile holds the secret the replicas authenticate peer requests
	// with (any string of 16 or more bytes, the same on every replica).
	// Unset: the environment variable GATEHOUSE_CLUSTER_SECRET. Required
	// with shared storage.
	SecretFile string `yaml:"secretFile,omitempty"`
	// LeaseTTL is how long a replica's claim on a fetch or a scan lasts
	// unless renewed: a killed replica's work is taken over after it.
	// Default 10s.
	LeaseTTL Duration `yaml:"leaseTTL,omitempty"`
}

// Shared reports whether records live in a database that several
// replicas share.
func (s Storage) Shared() bool { return s.Metadata.Type == StoragePostgres }

// finishStorage validates storage and cluster and fills in defaults.
func (c *Config) finishStorage() []error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("config: %s: %s", field, fmt.Sprintf(format, args...)))
	}
	st := &c.Storage
	switch st.Blobs.Type {
	case "":
		st.Blobs.Type = StorageLocal
	case StorageLocal, StorageS3:
	default:
		bad("storage.blobs.type", "%q is not local or s3", st.Blobs.Type)
	}
	switch st.Metadata.Type {
	case "":
		st.Metadata.Type = StorageBbolt
	case StorageBbolt, StoragePostgres:
	default:
		bad("storage.metadata.type", "%q is not bbolt or postgres", st.Metadata.Type)
	}
	if st.Blobs.LocalTier.MaxSize < 0 {
		bad("storage.blobs.localTier.maxSize", "must not be negative")
	} else if st.Blobs.LocalTier.MaxSize > 0 && st.Blobs.Type != StorageS3 {
		bad("storage.blobs.localTier.maxSize", "a local tier needs storage.blobs.type s3")
	}
	if st.Blobs.Type == StorageS3 {
		errs = append(errs, st.Blobs.S3.finish("storage.blobs.s3")...)
	}
	if st.Metadata.Type == StoragePostgres {
		p := &st.Metadata.Postgres
		if p.MaxConns == 0 {
			p.MaxConns = 16
		} else if p.MaxConns < 2 {
			bad("storage.metadata.postgres.maxConns", "must be at least 2")
		}
		if p.DSNFile == "" && os.Getenv("GATEHOUSE_POSTGRES_DSN") == "" {
			bad("storage.metadata.postgres.dsnFile", "required (or the environment variable GATEHOUSE_POSTGRES_DSN)")
		}
		errs = append(errs, checkReadable("storage.metadata.postgres.dsnFile", p.DSNFile)...)
	}
	// Replicas share both stores or neither: blobs in S3 with records in a
	// local bbolt would lose the records with the pod; records in
	// PostgreSQL with local blobs would point every replica at blobs only
	// one of them has.
	if (st.Blobs.Type == StorageS3) != (st.Metadata.Type == StoragePostgres) {
		bad("storage", "blobs.type s3 and metadata.type postgres go together (shared storage for several replicas); got %s and %s",
			st.Blobs.Type, st.Metadata.Type)
	}
	if st.Shared() {
		errs = append(errs, c.Cluster.finish()...)
	}
	return errs
}

func (s *S3) finish(field string) []error {
	var errs []error
	bad := func(f, format string, args ...any) {
		errs = append(errs, fmt.Errorf("config: %s.%s: %s", field, f, fmt.Sprintf(format, args...)))
	}
	if s.Endpoint == "" {
		bad("endpoint", "required")
	} else if u, err := url.Parse(s.Endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		bad("endpoint", "%q is not an http(s) URL", s.Endpoint)
	} else if u.User != nil {
		bad("endpoint", "must not carry credentials (use accessKeyIdFile and secretAccessKeyFile)")
	}
	if s.Bucket == "" {
		bad("bucket", "required")
	}
	if s.Region == "" {
		s.Region = "us-east-1"
	}
	if s.Prefix != "" && !strings.HasSuffix(s.Prefix, "/") {
		s.Prefix += "/"
	}
	if s.PartSize == 0 {
		s.PartSize = 16 << 20
	} else if s.PartSize < 5<<20 {
		bad("partSize", "must be at least 5MiB (S3's smallest part)")
	}
	switch {
	case (s.AccessKeyIDFile == "") != (s.SecretAccessKeyFile == ""):
		bad("accessKeyIdFile", "accessKeyIdFile and secretAccessKeyFile are set together")
	case s.AccessKeyIDFile == "" && (os.Getenv("AWS_ACCESS_KEY_ID") == "" || os.Getenv("AWS_SECRET_ACCESS_KEY") == ""):
		bad("accessKeyIdFile", "credentials required: accessKeyIdFile and secretAccessKeyFile, or the environment variables AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
	}
	errs = append(errs, checkReadable(field+".accessKeyIdFile", s.AccessKeyIDFile)...)
	errs = append(errs, checkReadable(field+".secretAccessKeyFile", s.SecretAccessKeyFile)...)
	errs = append(errs, checkReadable(field+".caFile", s.CAFile)...)
	return errs
}

func (cl *Cluster) finish() []error {
	var errs []error
	bad := func(f, format string, args ...any) {
		errs = append(errs, fmt.Errorf("config: cluster.%s: %s", f, fmt.Sprintf(format, args...)))
	}
	if cl.PeerListen == "" {
		cl.PeerListen = ":5001"
	}
	if _, _, err := net.SplitHostPort(cl.PeerListen); err != nil {
		bad("peerListen", "%q is not host:port", cl.PeerListen)
	}
	if cl.Advertise == "" {
		bad("advertise", "required with shared storage: the URL other replicas reach this one's peer listener at, e.g. http://${POD_IP}:5001")
	} else if strings.Contains(cl.Advertise, "$(") {
		bad("advertise", "%q: write ${VAR} (expanded by gatehouse from its environment), not Kubernetes' $(VAR)", cl.Advertise)
	} else if u, err := url.Parse(os.ExpandEnv(cl.Advertise)); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		bad("advertise", "%q is not an http(s) URL", cl.Advertise)
	}
	if cl.SecretFile == "" && len(os.Getenv("GATEHOUSE_CLUSTER_SECRET")) < 16 {
		bad("secretFile", "required with shared storage (or the environment variable GATEHOUSE_CLUSTER_SECRET, 16 bytes or more)")
	}
	if cl.SecretFile != "" {
		if sec, err := ReadSecret(cl.SecretFile, ""); err != nil {
			bad("secretFile", "%v", err)
		} else if len(sec) < 16 {
			bad("secretFile", "the secret must be 16 bytes or more")
		}
	}
	setDur(&cl.LeaseTTL, 10*time.Second)
	if cl.LeaseTTL.D() < time.Second {
		bad("leaseTTL", "must be at least 1s")
	}
	return errs
}

// checkReadable reports a set file that cannot be read.
func checkReadable(field, path string) []error {
	if path == "" {
		return nil
	}
	if _, err := os.ReadFile(path); err != nil {
		return []error{fmt.Errorf("config: %s: %w", field, err)}
	}
	return nil
}

// ReadSecret returns the trimmed contents of file, or of the environment
// variable env when file is unset.
func ReadSecret(file, env string) (string, error) {
	if file == "" {
		return os.Getenv(env), nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}
