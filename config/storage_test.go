package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The embedded default is one replica on the data directory.
func TestStorageDefaults(t *testing.T) {
	cfg, err := Parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Storage.Blobs.Type != StorageLocal || cfg.Storage.Metadata.Type != StorageBbolt || cfg.Storage.Shared() {
		t.Fatalf("default storage %+v", cfg.Storage)
	}
}

func TestSharedStorage(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	dsn := write("dsn", "postgres://gh:s3cret-password@db:5432/gh\n")
	ak, sk := write("ak", "AKIAEXAMPLE"), write("sk", "secret-key-value")
	secret := write("secret", "0123456789abcdef0123")
	good := `
storage:
  blobs: {type: s3, s3: {endpoint: "http://s3:9000", bucket: b, prefix: gh, pathStyle: true, accessKeyIdFile: ` + ak + `, secretAccessKeyFile: ` + sk + `}, localTier: {maxSize: 1GiB}}
  metadata: {type: postgres, postgres: {dsnFile: ` + dsn + `}}
cluster: {advertise: "http://${POD_IP}:5001", secretFile: ` + secret + `}
`
	t.Setenv("POD_IP", "10.0.0.7")
	cfg, err := Parse([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	s3 := cfg.Storage.Blobs.S3
	if !cfg.Storage.Shared() || s3.Prefix != "gh/" || s3.Region != "us-east-1" || s3.PartSize != 16<<20 ||
		cfg.Cluster.PeerListen != ":5001" || cfg.Cluster.LeaseTTL.D().Seconds() != 10 || cfg.Storage.Metadata.Postgres.MaxConns != 16 {
		t.Fatalf("defaults not filled in: %+v %+v", cfg.Storage, cfg.Cluster)
	}
	if got, _ := ReadSecret(cfg.Storage.Metadata.Postgres.DSNFile, ""); !strings.HasPrefix(got, "postgres://") || strings.HasSuffix(got, "\n") {
		t.Fatalf("dsn %q", got)
	}

	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("GATEHOUSE_POSTGRES_DSN", "")
	t.Setenv("GATEHOUSE_CLUSTER_SECRET", "")
	for _, tc := range []struct{ yaml, field string }{
		{"storage: {blobs: {type: gcs}}", "storage.blobs.type"},
		{"storage: {metadata: {type: sqlite}}", "storage.metadata.type"},
		{"storage: {blobs: {type: s3, s3: {endpoint: 'http://s3', bucket: b}}}", "storage: blobs.type s3 and metadata.type postgres go together"},
		{"storage: {blobs: {localTier: {maxSize: 1GiB}}}", "storage.blobs.localTier.maxSize"},
		{"storage: {blobs: {type: s3, s3: {bucket: b}}}", "storage.blobs.s3.endpoint"},
		{"storage: {blobs: {type: s3, s3: {endpoint: 'ftp://x', bucket: b}}}", "storage.blobs.s3.endpoint"},
		{"storage: {blobs: {type: s3, s3: {endpoint: 'http://u:p@x', bucket: b}}}", "storage.blobs.s3.endpoint"},
		{"storage: {blobs: {type: s3, s3: {endpoint: 'http://x'}}}", "storage.blobs.s3.bucket"},
		{"storage: {blobs: {type: s3, s3: {endpoint: 'http://x', bucket: b}}}", "storage.blobs.s3.accessKeyIdFile"},
		{"storage: {blobs: {type: s3, s3: {endpoint: 'http://x', bucket: b, partSize: 1MiB}}}", "storage.blobs.s3.partSize"},
		{"storage: {blobs: {type: s3, s3: {endpoint: 'http://x', bucket: b, caFile: /nope}}}", "storage.blobs.s3.caFile"},
		{"storage: {metadata: {type: postgres}}", "storage.metadata.postgres.dsnFile"},
		{"storage: {metadata: {type: postgres, postgres: {dsnFile: /nope}}}", "storage.metadata.postgres.dsnFile"},
		{"storage: {metadata: {type: postgres, postgres: {maxConns: 1}}}", "storage.metadata.postgres.maxConns"},
		{"storage: {metadata: {type: postgres}}", "cluster.advertise"},
		{"storage: {metadata: {type: postgres}}\ncluster: {advertise: 'nope'}", "cluster.advertise"},
		{"storage: {metadata: {type: postgres}}\ncluster: {advertise: 'http://$(POD_IP):5001'}", "${VAR}"},
		{"storage: {metadata: {type: postgres}}", "cluster.secretFile"},
		{"storage: {metadata: {type: postgres}}\ncluster: {secretFile: " + write("short", "short") + "}", "16 bytes"},
		{"storage: {metadata: {type: postgres}}\ncluster: {peerListen: nope}", "cluster.peerListen"},
		{"storage: {metadata: {type: postgres}}\ncluster: {leaseTTL: 10ms}", "cluster.leaseTTL"},
	} {
		_, err := Parse([]byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%q: error %v does not name %s", tc.yaml, err, tc.field)
		}
	}
	// Credentials from the environment are enough, and never end up in an error.
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIAENV")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "env-secret-key")
	t.Setenv("GATEHOUSE_POSTGRES_DSN", "postgres://u:env-password@db/x")
	t.Setenv("GATEHOUSE_CLUSTER_SECRET", "0123456789abcdef")
	_, err = Parse([]byte("storage: {blobs: {type: s3, s3: {endpoint: 'http://x', bucket: b}}, metadata: {type: postgres}}\ncluster: {advertise: 'http://a:5001', leaseTTL: 1ms}"))
	if err == nil || !strings.Contains(err.Error(), "cluster.leaseTTL") {
		t.Fatalf("want only the leaseTTL error, got %v", err)
	}
	for _, secret := range []string{"env-secret-key", "env-password", "0123456789abcdef", "s3cret-password"} {
		if strings.Contains(err.Error(), secret) {
			t.Fatalf("error shows a secret: %v", err)
		}
	}
}
