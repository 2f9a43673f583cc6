package pgmeta

import (
	"cmp"
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

type migration struct {
	version int
	name    string
	sql     string
}

// migrations returns the embedded schema migrations in version order;
// migrations/NNNN_what.sql has version NNNN.
func migrations() ([]migration, error) {
	files, err := fs.Glob(migrationFS, "migrations/*.sql")
	if err != nil {
		return nil, err
	}
	var out []migration
	for _, f := range files {
		name := path.Base(f)
		num, _, ok := strings.Cut(name, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("pgmeta: migration %s is not named NNNN_what.sql", name)
		}
		b, err := migrationFS.ReadFile(f)
		if err != nil {
			return nil, err
		}
		out = append(out, migration{version: v, name: name, sql: string(b)})
	}
	slices.SortFunc(out, func(a, b migration) int { return cmp.Compare(a.version, b.version) })
	for i := 1; i < len(out); i++ {
		if out[i].version == out[i-1].version {
			return nil, fmt.Errorf("pgmeta: two migrations of version %d", out[i].version)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("pgmeta: no migrations embedded")
	}
	return out, nil
}

// migrate applies the migrations the database lacks, in one transaction
// holding an advisory lock: replicas starting together wait for the first
// and then find nothing to do.
func (s *Store) migrate(ctx context.Context) error {
	migs, err := migrations()
	if err != nil {
		return err
	}
	latest := migs[len(migs)-1].version
	tx, err := s.begin(ctx, pgx.TxOptions{})
	if err != nil {
		return s.wrap(err, "open %s", s.target)
	}
	defer rollback(ctx, tx)
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", lockKey("migrate")); err != nil {
		return s.wrap(err, "open %s: lock the schema", s.target)
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS gatehouse_schema_migrations (
		version integer PRIMARY KEY,
		applied_at timestamptz NOT NULL DEFAULT now()
	)`); err != nil {
		return s.wrap(err, "open %s: create gatehouse_schema_migrations", s.target)
	}
	var current int
	if err := tx.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM gatehouse_schema_migrations").Scan(&current); err != nil {
		return s.wrap(err, "open %s: read the schema version", s.target)
	}
	if current > latest {
		return fmt.Errorf("pgmeta: the schema of %s is at version %d, newer than this gatehouse knows (%d): run a gatehouse as new as the one that migrated it", s.target, current, latest)
	}
	var applied []int
	for _, m := range migs {
		if m.version <= current {
			continue
		}
		if _, err := tx.Exec(ctx, m.sql); err != nil {
			return s.wrap(err, "open %s: migration %s", s.target, m.name)
		}
		if _, err := tx.Exec(ctx, "INSERT INTO gatehouse_schema_migrations (version) VALUES ($1)", m.version); err != nil {
			return s.wrap(err, "open %s: record migration %s", s.target, m.name)
		}
		applied = append(applied, m.version)
	}
	if err := tx.Commit(ctx); err != nil {
		return s.wrap(err, "open %s: commit the schema", s.target)
	}
	for _, v := range applied {
		s.log.Info("pgmeta: applied a schema migration", "database", s.target, "version", v)
	}
	s.applied = applied
	return nil
}
