package localblob

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/storage"
	"github.com/gatehouse/gatehouse/storage/storagetest"
)

func TestContract(t *testing.T) {
	storagetest.BlobStore(t, func(t *testing.T) storage.BlobStore {
		s, err := Open(t.TempDir(), nil)
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

func write(t *testing.T, p string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// Open keeps the layout of earlier gatehouse versions: blobs committed
// before are found; partial files a crash left are removed, and so are
// files under blobs that are not named by their digest.
func TestOpenCleansUp(t *testing.T) {
	dir := t.TempDir()
	data, d := storagetest.Blob(100, 1)
	good := filepath.Join(dir, "blobs", "sha256", d.Hex[:2], d.Hex)
	write(t, good, data)
	stray := []string{
		filepath.Join(dir, "blobs", "sha256", d.Hex[:2], "notadigest"),
		filepath.Join(dir, "blobs", "sha256", "00", d.Hex), // wrong fan-out directory
		filepath.Join(dir, "blobs", "sha256", "loose"),
	}
	for _, p := range stray {
		write(t, p, []byte("x"))
	}
	write(t, filepath.Join(dir, "tmp", d.Hex+".123"), data[:10])
	write(t, filepath.Join(dir, "tmp", "sub", "x"), nil)

	s, err := Open(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(ents) != 0 {
		t.Errorf("partial files left: %v", ents)
	}
	for _, p := range stray {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("stray file %s kept: %v", p, err)
		}
	}
	if size, err := s.Stat(t.Context(), d); err != nil || size != 100 {
		t.Errorf("blob of an earlier run: %d, %v", size, err)
	}
	got := 0
	if err := s.Walk(t.Context(), func(v1.Hash, int64) error { got++; return nil }); err != nil || got != 1 {
		t.Errorf("Walk found %d blobs (%v), want 1", got, err)
	}
}

// Readers are the *os.File itself, so that net/http serves them with
// sendfile; a committed blob is a file of the layout.
func TestReadersAreFiles(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	data, d := storagetest.Blob(1000, 2)
	w, err := s.Create(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	pr, err := w.Partial()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	if _, ok := pr.(*os.File); !ok {
		t.Errorf("Partial returned a %T, want *os.File", pr)
	}
	if err := w.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	r, _, err := s.Open(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, ok := r.(*os.File); !ok {
		t.Errorf("Open returned a %T, want *os.File", r)
	}
	if got, err := os.ReadFile(filepath.Join(dir, "blobs", "sha256", d.Hex[:2], d.Hex)); err != nil || string(got) != string(data) {
		t.Errorf("committed file: %d bytes, %v", len(got), err)
	}
}

// A digest that is not sha256 of 64 hex digits is refused, so that no
// digest names a path outside the store.
func TestRefusesOtherDigests(t *testing.T) {
	s, err := Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []v1.Hash{{}, {Algorithm: "sha512", Hex: strings.Repeat("a", 64)},
		{Algorithm: "sha256", Hex: "../../" + strings.Repeat("a", 58)}, {Algorithm: "sha256", Hex: "ab"}} {
		if _, err := s.Create(t.Context(), d); err == nil {
			t.Errorf("Create(%q) succeeded", d)
		}
		if _, _, err := s.Open(t.Context(), d); err == nil {
			t.Errorf("Open(%q) succeeded", d)
		}
	}
}
