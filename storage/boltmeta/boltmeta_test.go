package boltmeta

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse/gatehouse/storage"
	"github.com/gatehouse/gatehouse/storage/storagetest"
)

func TestContract(t *testing.T) {
	storagetest.MetaStore(t, func(t *testing.T) storage.MetaStore {
		s, err := Open(filepath.Join(t.TempDir(), "meta.db"), 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

// The file is locked: a second Open of it fails after its timeout.
func TestSecondOpenFails(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meta.db")
	s, err := Open(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	start := time.Now()
	if s2, err := Open(path, 50*time.Millisecond); err == nil {
		s2.Close()
		t.Fatal("second Open of a locked file succeeded")
	} else if !strings.Contains(err.Error(), path) {
		t.Errorf("error %q does not name the file", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Error("second Open did not give up after its timeout")
	}
}
