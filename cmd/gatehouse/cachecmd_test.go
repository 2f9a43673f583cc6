package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// `cache verify` re-hashes every blob: a file whose bytes no longer match
// its name (disk corruption, a hand edit) is reported and the command
// fails; with --remove it is deleted and the store verifies clean, while
// the good blob stays.
func TestCacheVerifyRemovesCorruptBlob(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	cfg := filepath.Join(dir, "g.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("dataDir: %q\n", data)), 0o600); err != nil {
		t.Fatal(err)
	}
	blob := func(content []byte) (string, string) {
		sum := sha256.Sum256(content)
		h := hex.EncodeToString(sum[:])
		p := filepath.Join(data, "blobs", "sha256", h[:2], h)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, content, 0o644); err != nil {
			t.Fatal(err)
		}
		return "sha256:" + h, p
	}
	good, goodPath := blob([]byte("a good layer"))
	bad, badPath := blob([]byte("a layer that will rot"))
	// Same size, other bytes: only a re-hash can tell.
	if err := os.WriteFile(badPath, []byte("a layer that has rot!"), 0o644); err != nil {
		t.Fatal(err)
	}

	verify := func(args ...string) (int, string) {
		var out bytes.Buffer
		code := run(context.Background(), append([]string{"cache", "verify", "--config", cfg}, args...), &out, &out)
		return code, out.String()
	}
	code, out := verify()
	if code == 0 || !strings.Contains(out, "BAD "+bad) || strings.Contains(out, good) || !strings.Contains(out, "verified 2 blobs, 1 bad") {
		t.Fatalf("verify of a corrupt store: exit %d\n%s", code, out)
	}
	if _, err := os.Stat(badPath); err != nil {
		t.Fatalf("verify without --remove deleted the bad blob: %v", err)
	}
	code, out = verify("--remove")
	if code != 0 || !strings.Contains(out, "removed "+bad) {
		t.Fatalf("verify --remove: exit %d\n%s", code, out)
	}
	if _, err := os.Stat(badPath); !os.IsNotExist(err) {
		t.Fatalf("bad blob still on disk: %v", err)
	}
	if _, err := os.Stat(goodPath); err != nil {
		t.Fatalf("good blob removed: %v", err)
	}
	if code, out = verify(); code != 0 || !strings.Contains(out, "verified 1 blobs, 0 bad") {
		t.Fatalf("verify after --remove: exit %d\n%s", code, out)
	}
}
