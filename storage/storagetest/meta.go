// Package storagetest holds the contract suites of package storage: every
// MetaStore and BlobStore implementation runs them from its own tests,
//
//	func TestContract(t *testing.T) {
//		storagetest.MetaStore(t, func(t *testing.T) storage.MetaStore { ... })
//	}
//
// with an open function that returns a new, empty store (and closes it
// with t.Cleanup). The suites check what storage documents, nothing of a
// particular backend.
package storagetest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/gatehouse/gatehouse/storage"
)

// MetaStore runs the MetaStore contract against stores made by open.
func MetaStore(t *testing.T, open func(t *testing.T) storage.MetaStore) {
	for _, tc := range []struct {
		name string
		fn   func(*testing.T, storage.MetaStore)
	}{
		{"MissingTable", metaMissingTable},
		{"PutGetDelete", metaPutGetDelete},
		{"ValuesAreTheBytesPut", metaValues},
		{"TablesAreSeparate", metaTablesSeparate},
		{"Scan", metaScan},
		{"ScanStopsEarly", metaScanStop},
		{"ScanManyKeys", metaScanMany},
		{"NextSequence", metaNextSequence},
		{"UpdateRollsBack", metaRollback},
		{"ViewCannotWrite", metaViewReadOnly},
		{"DropTable", metaDropTable},
		{"ConcurrentUpdates", metaConcurrent},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open(t)) })
	}
}

// get reads one value, copied out of its transaction.
func get(t *testing.T, m storage.MetaStore, table, key string) []byte {
	t.Helper()
	var out []byte
	if err := m.View(t.Context(), func(tx storage.Tx) error {
		v, err := tx.Get(table, []byte(key))
		if v != nil {
			out = bytes.Clone(v)
			if out == nil {
				out = []byte{}
			}
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func update(t *testing.T, m storage.MetaStore, fn func(tx storage.Tx) error) {
	t.Helper()
	if err := m.Update(t.Context(), fn); err != nil {
		t.Fatal(err)
	}
}

func put(t *testing.T, m storage.MetaStore, table string, kv ...string) {
	t.Helper()
	update(t, m, func(tx storage.Tx) error {
		for i := 0; i+1 < len(kv); i += 2 {
			if err := tx.Put(table, []byte(kv[i]), []byte(kv[i+1])); err != nil {
				return err
			}
		}
		return nil
	})
}

// scan returns the keys of table under prefix, in the order Scan gave them.
func scan(t *testing.T, m storage.MetaStore, table, prefix string, reverse bool) []string {
	t.Helper()
	var keys []string
	if err := m.View(t.Context(), func(tx storage.Tx) error {
		return tx.Scan(table, []byte(prefix), reverse, func(k, v []byte) (bool, error) {
			keys = append(keys, string(k))
			return true, nil
		})
	}); err != nil {
		t.Fatal(err)
	}
	return keys
}

func metaMissingTable(t *testing.T, m storage.MetaStore) {
	if v := get(t, m, "none", "k"); v != nil {
		t.Errorf("Get in a missing table = %q, want nil", v)
	}
	if keys := scan(t, m, "none", "", false); len(keys) != 0 {
		t.Errorf("Scan of a missing table found %q", keys)
	}
	update(t, m, func(tx storage.Tx) error {
		if err := tx.Delete("none", []byte("k")); err != nil {
			return fmt.Errorf("Delete in a missing table: %w", err)
		}
		if err := tx.DropTable("none"); err != nil {
			return fmt.Errorf("DropTable of a missing table: %w", err)
		}
		return nil
	})
}

func metaPutGetDelete(t *testing.T, m storage.MetaStore) {
	put(t, m, "t", "a", "1", "b", "2")
	if v := get(t, m, "t", "a"); string(v) != "1" {
		t.Errorf("Get a = %q, want 1", v)
	}
	put(t, m, "t", "a", "one")
	if v := get(t, m, "t", "a"); string(v) != "one" {
		t.Errorf("Get a after overwrite = %q, want one", v)
	}
	if v := get(t, m, "t", "c"); v != nil {
		t.Errorf("Get of a missing key = %q, want nil", v)
	}
	update(t, m, func(tx storage.Tx) error {
		if err := tx.Delete("t", []byte("a")); err != nil {
			return err
		}
		// Inside the transaction that deleted it, the key is gone.
		if v, err := tx.Get("t", []byte("a")); v != nil || err != nil {
			return fmt.Errorf("Get after Delete in the same transaction = %q, %v", v, err)
		}
		return tx.Delete("t", []byte("missing"))
	})
	if v := get(t, m, "t", "a"); v != nil {
		t.Errorf("Get after Delete = %q, want nil", v)
	}
	if v := get(t, m, "t", "b"); string(v) != "2" {
		t.Errorf("Get b = %q, want 2", v)
	}
}

func metaValues(t *testing.T, m storage.MetaStore) {
	bin := []byte{0, 1, 0xff, 0, 0x80, '\n'}
	val := bytes.Clone(bin)
	update(t, m, func(tx storage.Tx) error {
		if err := tx.Put("t", []byte("bin"), val); err != nil {
			return err
		}
		return tx.Put("t", []byte("empty"), []byte{})
	})
	val[0] = 'x' // the caller's slice is its own again after the commit
	if v := get(t, m, "t", "bin"); !bytes.Equal(v, bin) {
		t.Errorf("binary value = %x, want %x", v, bin)
	}
	if v := get(t, m, "t", "empty"); v == nil || len(v) != 0 {
		t.Errorf("empty value = %#v, want a non-nil empty slice (nil means missing)", v)
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<14) // 256 KiB
	put(t, m, "t", "big", string(big))
	if v := get(t, m, "t", "big"); !bytes.Equal(v, big) {
		t.Errorf("256 KiB value came back as %d bytes", len(v))
	}
}

func metaTablesSeparate(t *testing.T, m storage.MetaStore) {
	put(t, m, "t", "a", "t")
	put(t, m, "t2", "a", "t2", "b", "t2")
	put(t, m, "t/", "a", "t/")
	if v := get(t, m, "t", "a"); string(v) != "t" {
		t.Errorf("t/a = %q", v)
	}
	if keys := scan(t, m, "t", "", false); len(keys) != 1 {
		t.Errorf("Scan of t found %q, want only a", keys)
	}
	if v := get(t, m, "t", "b"); v != nil {
		t.Errorf("t/b = %q: another table's key", v)
	}
}

func metaScan(t *testing.T, m storage.MetaStore) {
	keys := []string{"a", "ab", "abc", "ab\xff", "ab\xff\xff", "ac", "b", "b\x00", "ba", "d", "\xff", "\xff\x00", "\xff\xff"}
	// Put in an order other than the key order.
	for i := range keys {
		k := keys[(i*5)%len(keys)]
		put(t, m, "t", k, "v-"+k)
	}
	put(t, m, "other", "a0", "x", "b0", "x")
	sorted := slices.Clone(keys)
	slices.Sort(sorted) // byte order
	for _, tc := range []struct {
		prefix string
		n      int // keys under prefix
	}{
		{"", len(keys)},
		{"a", 6},
		{"ab", 4},
		{"ab\xff", 2},
		{"b", 3},
		{"c", 0},  // between keys
		{"zz", 0}, // after every key but the 0xff ones
		{"\xff", 3},
		{"\xff\xff", 1},
		{"\xff\xff\xff", 0},
	} {
		var want []string
		for _, k := range sorted {
			if strings.HasPrefix(k, tc.prefix) {
				want = append(want, k)
			}
		}
		if len(want) != tc.n {
			t.Fatalf("test table: %d keys under %q, not %d", len(want), tc.prefix, tc.n)
		}
		for _, reverse := range []bool{false, true} {
			want := want
			if reverse {
				want = reversed(want)
			}
			if got := scan(t, m, "t", tc.prefix, reverse); !equal(got, want) {
				t.Errorf("Scan(%q, reverse=%v) = %q, want %q", tc.prefix, reverse, got, want)
			}
		}
	}
	// Values come with their keys.
	if err := m.View(t.Context(), func(tx storage.Tx) error {
		return tx.Scan("t", nil, false, func(k, v []byte) (bool, error) {
			if string(v) != "v-"+string(k) {
				return false, fmt.Errorf("Scan gave %q the value %q", k, v)
			}
			return true, nil
		})
	}); err != nil {
		t.Error(err)
	}
}

func reversed(s []string) []string {
	out := make([]string, len(s))
	for i, v := range s {
		out[len(s)-1-i] = v
	}
	return out
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func metaScanStop(t *testing.T, m storage.MetaStore) {
	put(t, m, "t", "a", "1", "b", "2", "c", "3", "d", "4")
	errStop := errors.New("stop")
	for _, reverse := range []bool{false, true} {
		var seen []string
		err := m.View(t.Context(), func(tx storage.Tx) error {
			return tx.Scan("t", nil, reverse, func(k, v []byte) (bool, error) {
				seen = append(seen, string(k))
				return len(seen) < 2, nil
			})
		})
		want := []string{"a", "b"}
		if reverse {
			want = []string{"d", "c"}
		}
		if err != nil || !equal(seen, want) {
			t.Errorf("Scan stopped after 2 (reverse=%v): saw %q, %v; want %q", reverse, seen, err, want)
		}
		n := 0
		err = m.View(t.Context(), func(tx storage.Tx) error {
			return tx.Scan("t", nil, reverse, func(k, v []byte) (bool, error) {
				n++
				return true, errStop
			})
		})
		if !errors.Is(err, errStop) || n != 1 {
			t.Errorf("Scan whose fn failed: %d calls, err %v; want 1 and the error", n, err)
		}
	}
}

// metaScanMany scans more keys than one page of any backend.
func metaScanMany(t *testing.T, m storage.MetaStore) {
	const n = 3000
	update(t, m, func(tx storage.Tx) error {
		for i := range n {
			if err := tx.Put("t", fmt.Appendf(nil, "k%05d", i), []byte{byte(i)}); err != nil {
				return err
			}
		}
		return nil
	})
	for _, reverse := range []bool{false, true} {
		keys := scan(t, m, "t", "k", reverse)
		if len(keys) != n {
			t.Fatalf("Scan found %d of %d keys (reverse=%v)", len(keys), n, reverse)
		}
		for i, k := range keys {
			j := i
			if reverse {
				j = n - 1 - i
			}
			if k != fmt.Sprintf("k%05d", j) {
				t.Fatalf("key %d is %q (reverse=%v)", i, k, reverse)
			}
		}
	}
}

func metaNextSequence(t *testing.T, m storage.MetaStore) {
	var last uint64
	for range 3 {
		update(t, m, func(tx storage.Tx) error {
			for range 2 {
				n, err := tx.NextSequence("t")
				if err != nil {
					return err
				}
				if n <= last {
					return fmt.Errorf("NextSequence = %d after %d", n, last)
				}
				last = n
			}
			return nil
		})
	}
}

func metaRollback(t *testing.T, m storage.MetaStore) {
	put(t, m, "t", "a", "1")
	errFail := errors.New("fail")
	err := m.Update(t.Context(), func(tx storage.Tx) error {
		for _, op := range []error{
			tx.Put("t", []byte("a"), []byte("changed")),
			tx.Put("t", []byte("b"), []byte("new")),
			tx.Put("new", []byte("k"), []byte("v")),
			tx.DropTable("t"),
		} {
			if op != nil {
				return op
			}
		}
		return errFail
	})
	if !errors.Is(err, errFail) {
		t.Fatalf("Update returned %v, want fn's error", err)
	}
	if v := get(t, m, "t", "a"); string(v) != "1" {
		t.Errorf("a after a rolled back Update = %q, want 1", v)
	}
	if v := get(t, m, "t", "b"); v != nil {
		t.Errorf("b after a rolled back Update = %q, want nil", v)
	}
	if keys := scan(t, m, "new", "", false); len(keys) != 0 {
		t.Errorf("table created by a rolled back Update holds %q", keys)
	}
}

func metaViewReadOnly(t *testing.T, m storage.MetaStore) {
	put(t, m, "t", "a", "1")
	for name, op := range map[string]func(storage.Tx) error{
		"Put":                  func(tx storage.Tx) error { return tx.Put("t", []byte("a"), []byte("2")) },
		"Put in a new table":   func(tx storage.Tx) error { return tx.Put("new", []byte("a"), []byte("2")) },
		"Delete":               func(tx storage.Tx) error { return tx.Delete("t", []byte("a")) },
		"DropTable":            func(tx storage.Tx) error { return tx.DropTable("t") },
		"NextSequence":         func(tx storage.Tx) error { _, err := tx.NextSequence("t"); return err },
		"NextSequence (new)":   func(tx storage.Tx) error { _, err := tx.NextSequence("new"); return err },
		"Delete (missing key)": func(tx storage.Tx) error { return tx.Delete("t", []byte("zz")) },
	} {
		if err := m.View(t.Context(), op); err == nil {
			t.Errorf("%s in View succeeded", name)
		}
	}
	if v := get(t, m, "t", "a"); string(v) != "1" {
		t.Errorf("a after writes in View = %q, want 1", v)
	}
	if v := get(t, m, "new", "a"); v != nil {
		t.Errorf("a write in View created a table")
	}
}

func metaDropTable(t *testing.T, m storage.MetaStore) {
	put(t, m, "t", "a", "1", "b", "2")
	put(t, m, "u", "a", "1")
	update(t, m, func(tx storage.Tx) error { return tx.DropTable("t") })
	if v := get(t, m, "t", "a"); v != nil {
		t.Errorf("a after DropTable = %q", v)
	}
	if keys := scan(t, m, "t", "", false); len(keys) != 0 {
		t.Errorf("Scan after DropTable found %q", keys)
	}
	if v := get(t, m, "u", "a"); string(v) != "1" {
		t.Errorf("DropTable of t touched u: %q", v)
	}
	put(t, m, "t", "c", "3")
	if keys := scan(t, m, "t", "", false); !equal(keys, []string{"c"}) {
		t.Errorf("table recreated after DropTable holds %q", keys)
	}
}

func metaConcurrent(t *testing.T, m storage.MetaStore) {
	const n = 32
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			errs <- m.Update(context.Background(), func(tx storage.Tx) error {
				v, err := tx.Get("t", []byte("counter"))
				if err != nil {
					return err
				}
				var c uint64
				if v != nil {
					c = binary.BigEndian.Uint64(v)
				}
				return tx.Put("t", []byte("counter"), binary.BigEndian.AppendUint64(nil, c+1))
			})
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if v := get(t, m, "t", "counter"); len(v) != 8 || binary.BigEndian.Uint64(v) != n {
		t.Errorf("counter after %d concurrent increments = %x", n, v)
	}
}
