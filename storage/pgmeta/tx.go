package pgmeta

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

// txn is a transaction of a Store. It keeps the context of its View or
// Update, which Tx's methods do not take.
type txn struct {
	ctx      context.Context
	tx       pgx.Tx
	s        *Store
	writable bool
}

var errReadOnly = errors.New("write in a read-only transaction")

// nonNil makes a nil key the empty key: pgx sends a nil slice as NULL.
func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

func (t *txn) readOnly(op, table string) error {
	if t.writable {
		return nil
	}
	return fmt.Errorf("pgmeta: %s %s: %w", op, table, errReadOnly)
}

func (t *txn) Get(table string, key []byte) ([]byte, error) {
	var v []byte
	err := t.tx.QueryRow(t.ctx, "SELECT v FROM gatehouse_kv WHERE ns = $1 AND tbl = $2 AND k = $3",
		t.s.ns, table, nonNil(key)).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, t.s.wrap(err, "get %s", table)
	}
	return nonNil(v), nil
}

func (t *txn) Put(table string, key, value []byte) error {
	if value == nil {
		return fmt.Errorf("pgmeta: put %s: nil value", table)
	}
	if err := t.readOnly("put", table); err != nil {
		return err
	}
	_, err := t.tx.Exec(t.ctx, `INSERT INTO gatehouse_kv (ns, tbl, k, v) VALUES ($1, $2, $3, $4)
		ON CONFLICT (ns, tbl, k) DO UPDATE SET v = EXCLUDED.v`, t.s.ns, table, nonNil(key), value)
	if err != nil {
		return t.s.wrap(err, "put %s", table)
	}
	return nil
}

func (t *txn) Delete(table string, key []byte) error {
	if err := t.readOnly("delete", table); err != nil {
		return err
	}
	_, err := t.tx.Exec(t.ctx, "DELETE FROM gatehouse_kv WHERE ns = $1 AND tbl = $2 AND k = $3", t.s.ns, table, nonNil(key))
	if err != nil {
		return t.s.wrap(err, "delete %s", table)
	}
	return nil
}

// scanPage is how many rows one query of Scan reads.
const scanPage = 256

// Scan reads a page of rows at a time and closes the query before calling
// fn, so that fn may use the transaction (a pgx connection runs one query
// at a time); the next page starts after the last key seen.
func (t *txn) Scan(table string, prefix []byte, reverse bool, fn func(key, value []byte) (bool, error)) error {
	lo, loIncl := nonNil(prefix), true // lower bound
	hi := prefixEnd(prefix)            // exclusive upper bound, nil for none
	var page []kv
	for {
		var err error
		if page, err = t.page(table, lo, loIncl, hi, reverse, page[:0]); err != nil {
			return err
		}
		for _, r := range page {
			if ok, err := fn(r.k, r.v); err != nil || !ok {
				return err
			}
		}
		if len(page) < scanPage {
			return nil
		}
		last := page[len(page)-1].k
		if reverse {
			hi = last
		} else {
			lo, loIncl = last, false
		}
	}
}

type kv struct{ k, v []byte }

// page reads up to scanPage rows of table with keys from lo (inclusive
// when loIncl) to hi (exclusive; none when nil), in key order or reversed.
func (t *txn) page(table string, lo []byte, loIncl bool, hi []byte, reverse bool, out []kv) ([]kv, error) {
	var q strings.Builder
	q.WriteString("SELECT k, v FROM gatehouse_kv WHERE ns = $1 AND tbl = $2 AND k ")
	if loIncl {
		q.WriteString(">= $3")
	} else {
		q.WriteString("> $3")
	}
	args := []any{t.s.ns, table, lo}
	if hi != nil {
		q.WriteString(" AND k < $4")
		args = append(args, hi)
	}
	if reverse {
		q.WriteString(" ORDER BY k DESC")
	} else {
		q.WriteString(" ORDER BY k")
	}
	q.WriteString(" LIMIT " + strconv.Itoa(scanPage))
	rows, err := t.tx.Query(t.ctx, q.String(), args...)
	if err != nil {
		return nil, t.s.wrap(err, "scan %s", table)
	}
	defer rows.Close()
	for rows.Next() {
		var r kv
		if err := rows.Scan(&r.k, &r.v); err != nil {
			return nil, t.s.wrap(err, "scan %s", table)
		}
		r.k, r.v = nonNil(r.k), nonNil(r.v)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, t.s.wrap(err, "scan %s", table)
	}
	return out, nil
}

// prefixEnd is the first key after every key starting with prefix, nil
// when there is none (an empty prefix, or all 0xff).
func prefixEnd(prefix []byte) []byte {
	end := bytes.Clone(prefix)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}

func (t *txn) NextSequence(table string) (uint64, error) {
	if err := t.readOnly("next sequence of", table); err != nil {
		return 0, err
	}
	var n int64
	err := t.tx.QueryRow(t.ctx, `INSERT INTO gatehouse_seq AS s (ns, tbl, n) VALUES ($1, $2, 1)
		ON CONFLICT (ns, tbl) DO UPDATE SET n = s.n + 1 RETURNING n`, t.s.ns, table).Scan(&n)
	if err != nil {
		return 0, t.s.wrap(err, "next sequence of %s", table)
	}
	return uint64(n), nil
}

func (t *txn) DropTable(table string) error {
	if err := t.readOnly("drop", table); err != nil {
		return err
	}
	if _, err := t.tx.Exec(t.ctx, "DELETE FROM gatehouse_kv WHERE ns = $1 AND tbl = $2", t.s.ns, table); err != nil {
		return t.s.wrap(err, "drop %s", table)
	}
	if _, err := t.tx.Exec(t.ctx, "DELETE FROM gatehouse_seq WHERE ns = $1 AND tbl = $2", t.s.ns, table); err != nil {
		return t.s.wrap(err, "drop %s", table)
	}
	return nil
}
