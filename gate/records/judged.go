package records

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"

	"github.com/gatehouse/gatehouse/storage"
)

// RepoVerdict is a manifest's latest stored verdict in one repository.
type RepoVerdict struct {
	Upstream string
	Repo     string
	// Latest is the newest verdict stored under the repository's keys (by
	// JudgedAt); nil when none decodes.
	Latest *Verdict
}

// Judged lists the repositories manifest dgst has a verdict stored in
// (the keys of the verdicts table, see VerdictKey), each with its latest
// one, sorted by upstream and repository. An image record names only the
// repository of its first pull: the same manifest may be served, and
// judged, in others.
func (s *Store) Judged(ctx context.Context, dgst string) ([]RepoVerdict, error) {
	byRepo := map[string]*RepoVerdict{}
	err := s.meta.View(ctx, func(tx storage.Tx) error {
		return tx.Scan(tableVerdicts, []byte(dgst+"|"), false, func(k, val []byte) (bool, error) {
			up, repo, ok := keyRepo(string(k))
			if !ok {
				return true, nil
			}
			rv := byRepo[up+"/"+repo]
			if rv == nil {
				rv = &RepoVerdict{Upstream: up, Repo: repo}
				byRepo[up+"/"+repo] = rv
			}
			var v Verdict
			if json.Unmarshal(val, &v) == nil && (rv.Latest == nil || !v.JudgedAt.Before(rv.Latest.JudgedAt)) {
				rv.Latest = &v
			}
			return true, nil
		})
	})
	if errors.Is(err, storage.ErrNotFound) {
		err = nil // no verdict stored yet: no table
	}
	out := make([]RepoVerdict, 0, len(byRepo))
	for _, rv := range byRepo {
		out = append(out, *rv)
	}
	slices.SortFunc(out, func(a, b RepoVerdict) int {
		return cmp.Or(cmp.Compare(a.Upstream, b.Upstream), cmp.Compare(a.Repo, b.Repo))
	})
	return out, err
}

// keyRepo is the upstream and repository of a VerdictKey (an upstream
// name holds no "/"; a repository may).
func keyRepo(key string) (upstream, repo string, ok bool) {
	parts := strings.Split(key, "|")
	if len(parts) != 4 {
		return "", "", false
	}
	upstream, repo, ok = strings.Cut(parts[1], "/")
	return upstream, repo, ok && upstream != "" && repo != ""
}
