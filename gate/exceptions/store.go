package exceptions

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gatehouse/gatehouse/events"
	"github.com/gatehouse/gatehouse/gate"
	"github.com/gatehouse/gatehouse/gate/policy"
	"github.com/gatehouse/gatehouse/metrics"
)

// Options configure a Store.
type Options struct {
	// Path is gate.exceptions.path: a YAML file or a directory of them.
	Path string
	// WarnBefore is gate.exceptions.warnBefore.
	WarnBefore time.Duration
	// Upstream, when set, returns the name of a configured upstream
	// (resolving aliases and case), or false: an exception naming another
	// upstream is an error.
	Upstream func(string) (string, bool)
	Log      *slog.Logger
}

// Store holds the exceptions in force, swapped atomically by Reload. It is
// safe for concurrent use.
type Store struct {
	opts Options
	cur  atomic.Pointer[loaded]

	mu      sync.Mutex          // serialises Reload and Check
	warned  map[string]bool     // exceptions whose expiring event was published
	inForce map[string]struct{} // exceptions in force at the last Check
}

// loaded is a set and the digest of the files it was read from.
type loaded struct {
	set    *Set
	digest string
}

var _ gate.Exceptions = (*Store)(nil)

// Open reads the exceptions at opts.Path; any error is returned (at
// start-up, a file that does not load stops gatehouse).
func Open(opts Options) (*Store, error) {
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	s := &Store{opts: opts, warned: map[string]bool{}}
	files, digest, err := readFiles(opts.Path)
	if err != nil {
		return nil, err
	}
	set, err := s.parse(files)
	if err != nil {
		return nil, err
	}
	s.cur.Store(&loaded{set: set, digest: digest})
	return s, nil
}

// Except implements gate.Exceptions with the set in force.
func (s *Store) Except(upstream, repo, digest string, f policy.Finding, now time.Time) (*gate.Exception, bool) {
	return s.cur.Load().set.Except(upstream, repo, digest, f, now)
}

// List implements gate.Exceptions with the set in force.
func (s *Store) List(now time.Time) []gate.ExceptionStatus { return s.cur.Load().set.List(now) }

// Digest identifies the content of the files in force.
func (s *Store) Digest() string { return s.cur.Load().digest }

// Reload reads the files again and, when their content changed and loads,
// puts it in force and reports true. When it does not load, the set read
// before stays in force; the error is returned and counted.
func (s *Store) Reload() (changed bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	files, digest, err := readFiles(s.opts.Path)
	if err == nil && digest == s.cur.Load().digest {
		return false, nil
	}
	var set *Set
	if err == nil {
		set, err = s.parse(files)
	}
	if err != nil {
		metrics.ExceptionsReloadErrors.Inc()
		return false, err
	}
	s.cur.Store(&loaded{set: set, digest: digest})
	s.opts.Log.Info("exceptions reloaded", "path", s.opts.Path, "exceptions", set.Len(), "digest", digest[:12])
	return true, nil
}

// srcFile is one file read.
type srcFile struct {
	name string
	data []byte
}

func (s *Store) parse(files []srcFile) (*Set, error) {
	var all []*exception
	var errs []error
	for _, f := range files {
		xs, err := parse(f.name, f.data, s.opts.Upstream)
		all = append(all, xs...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return newSet(all, s.opts.WarnBefore), nil
}

// readFiles reads the file at p, or the *.yaml and *.yml files of the
// directory p (names starting with "." skipped, as are subdirectories: a
// Kubernetes ConfigMap volume keeps its versions in "..data" ones), in
// name order, and returns them with the digest of their names and content.
func readFiles(p string) ([]srcFile, string, error) {
	fi, err := os.Stat(p)
	if err != nil {
		return nil, "", err
	}
	names := []string{p}
	if fi.IsDir() {
		des, err := os.ReadDir(p)
		if err != nil {
			return nil, "", err
		}
		names = names[:0]
		for _, de := range des {
			n := de.Name()
			if strings.HasPrefix(n, ".") || (filepath.Ext(n) != ".yaml" && filepath.Ext(n) != ".yml") {
				continue
			}
			if st, err := os.Stat(filepath.Join(p, n)); err != nil || !st.Mode().IsRegular() {
				continue // a directory, or a dangling link (a ConfigMap being swapped)
			}
			names = append(names, filepath.Join(p, n))
		}
		slices.Sort(names)
	}
	h := sha256.New()
	var files []srcFile
	for _, n := range names {
		data, err := readCapped(n)
		if err != nil {
			return nil, "", err
		}
		fmt.Fprintf(h, "%s\x00%d\x00", n, len(data))
		h.Write(data)
		files = append(files, srcFile{name: n, data: data})
	}
	return files, hex.EncodeToString(h.Sum(nil)), nil
}

func readCapped(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileBytes+1))
	if err == nil && len(data) > maxFileBytes {
		err = fmt.Errorf("%s: larger than %d MiB", name, maxFileBytes>>20)
	}
	return data, err
}

// Check reports the exceptions at now: it sets the metrics, publishes an
// ExceptionExpiring event for each exception that entered the warnBefore
// window (once per exception while this Store lives: a restart publishes
// those still expiring once more), and reports whether an exception that
// was in force at the last Check has expired since, or vanished with a
// reload, so that the verdicts relying on it are judged again.
func (s *Store) Check(now time.Time, pub events.Publisher) (expired bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	set := s.cur.Load().set
	counts := map[string]int{}
	var next time.Time
	inForce := map[string]struct{}{}
	for _, x := range set.all {
		st := set.state(x, now)
		counts[st]++
		key := x.key()
		if st != gate.ExceptionExpired {
			inForce[key] = struct{}{}
			if next.IsZero() || x.Expires.Before(next) {
				next = x.Expires
			}
		}
		if st == gate.ExceptionExpiring && !s.warned[key] {
			s.warned[key] = true
			pub.Publish(expiringEvent(x, now))
			s.opts.Log.Warn("exception expiring", "id", x.ID, "owner", x.Owner, "expires", x.Expires, "source", x.Source)
		}
	}
	for k := range s.inForce {
		if _, ok := inForce[k]; !ok {
			expired = true
		}
	}
	s.inForce = inForce
	for k := range s.warned {
		if _, ok := inForce[k]; !ok {
			delete(s.warned, k) // gone or expired: the map does not grow with edits
		}
	}
	for _, st := range []string{gate.ExceptionActive, gate.ExceptionExpiring, gate.ExceptionExpired} {
		metrics.Exceptions.WithLabelValues(st).Set(float64(counts[st]))
	}
	ts := 0.0
	if !next.IsZero() {
		ts = float64(next.Unix())
	}
	metrics.ExceptionsNextExpiry.Set(ts)
	return expired
}

// key identifies an exception across reloads by everything it says.
func (x *exception) key() string {
	sc := x.scope
	return strings.Join([]string{x.ID, x.Owner, x.Reason, x.Expires.Format(time.RFC3339), x.Source,
		strings.Join(sc.Upstreams, ","), strings.Join(sc.Repositories, ","), strings.Join(sc.Digests, ","), strings.Join(sc.Packages, ",")}, "\x00")
}

// ExpiringData is the data of an ExceptionExpiring event.
type ExpiringData struct {
	ID      string              `json:"id"`
	Owner   string              `json:"owner"`
	Reason  string              `json:"reason"`
	Expires time.Time           `json:"expires"`
	Scope   gate.ExceptionScope `json:"scope"`
	Source  string              `json:"source"`
}

func expiringEvent(x *exception, now time.Time) events.Event {
	return events.Event{Type: events.ExceptionExpiring, Subject: x.ID, Time: now,
		Message: fmt.Sprintf("exception for %s (owner %s) expires %s, in %s: renew it or fix the image; after that it is no longer applied",
			x.ID, x.Owner, x.Expires.UTC().Format(time.RFC3339), x.Expires.Sub(now).Round(time.Hour)),
		Data: ExpiringData{ID: x.ID, Owner: x.Owner, Reason: x.Reason, Expires: x.Expires, Scope: x.scope, Source: x.Source}}
}
