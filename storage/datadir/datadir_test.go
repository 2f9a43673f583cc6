package datadir

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A gate.db that cannot be opened is an error naming it, not a panic (the
// stores opened before it are closed).
func TestUnopenableGateDB(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "gate.db"), []byte("not a bbolt file, long enough to be read as one"), 0o640); err != nil {
		t.Fatal(err)
	}
	s, err := Open(dir, Options{})
	if err == nil {
		s.Close()
		t.Fatal("opened a corrupt gate.db")
	}
	if !strings.Contains(err.Error(), "gate.db") {
		t.Fatalf("error %q does not name gate.db", err)
	}
	// meta.db was closed: it opens again at once.
	s, err = Open(dir, Options{NoGate: true})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
}

// The stores of a directory open, close and open again.
func TestOpenClose(t *testing.T) {
	dir := t.TempDir()
	for range 2 {
		s, err := Open(dir, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if s.Blobs == nil || s.Cache == nil || s.Gate == nil {
			t.Fatalf("missing store: %+v", s)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
