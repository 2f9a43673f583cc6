// Package records is the gate's memory: everything it writes down and reads
// back, in a storage.MetaStore. It owns the tables and their encodings —
// verdicts, scan reports, image records, signature results, the blob index
// that says which blobs a judged manifest opens or closes, the denial log
// and the pull counts — and the read side the API and the console show.
//
// It is named for what it holds (the gate's records of what it judged), not
// for a backend: the decision itself (policy, scan, signatures → verdict)
// stays in package gate, which imports this one; records never imports
// gate, and neither links a scanner.
package records

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/storage"
)

// Tables of the MetaStore, with the names and encodings of the bbolt
// buckets of earlier versions, so that an existing gate.db keeps working.
const (
	tableVerdicts = "verdicts" // VerdictKey → Verdict
	tableReports  = "reports"  // digest → StoredReport
	tableImages   = "images"   // digest → ImageRecord
	// tableSignatures holds signature results, each bound to the image,
	// the repository its signatures were fetched from and the rule (by
	// hash: its identities, key bytes and trusted root) they were verified
	// against: SignatureKey → SignatureResult. A result is reused only
	// under the same key; another rule or a rotated key verifies again.
	tableSignatures = "signatures"
)

// maxMemo bounds the in-memory sets (tags seen, pulls not yet flushed).
const maxMemo = 16384

// Options configure a Store.
type Options struct {
	// Denials bounds the denial log (zero values: the defaults of config).
	Denials config.Denials
	Log     *slog.Logger     // default slog.Default()
	Now     func() time.Time // default time.Now
	// Shared says that other replicas write to the same MetaStore: the
	// denial log is read from it, not from this replica's memory.
	Shared bool
}

// Store is the gate's records in a MetaStore. It is safe for concurrent
// use. It does not own the MetaStore: Close writes what is queued and
// leaves the MetaStore open for its owner to close.
type Store struct {
	meta    storage.MetaStore
	log     *slog.Logger
	now     func() time.Time
	denials *denialLog
	maxAge  time.Duration
	flushIv time.Duration
	shared  bool

	mu    sync.Mutex
	tags  map[string]struct{}   // digest+tag pairs already recorded
	pulls map[string]*pullCount // manifest → pulls not yet flushed
}

// Open migrates the tables of earlier versions, loads the denial log and
// returns the store.
func Open(ctx context.Context, meta storage.MetaStore, opts Options) (*Store, error) {
	s := &Store{
		meta:    meta,
		log:     cmp.Or(opts.Log, slog.Default()),
		now:     opts.Now,
		denials: newDenialLog(opts.Denials.Keep),
		maxAge:  opts.Denials.MaxAge.D(),
		flushIv: cmp.Or(opts.Denials.FlushInterval.D(), config.DefaultDenialsFlushInterval),
		tags:    map[string]struct{}{},
		pulls:   map[string]*pullCount{},
		shared:  opts.Shared,
	}
	if s.now == nil {
		s.now = time.Now
	}
	if err := meta.Update(ctx, func(tx storage.Tx) error {
		for _, t := range oldBlobTables {
			if err := tx.DropTable(t); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("records: %w", err)
	}
	if err := s.loadDenials(ctx); err != nil {
		return nil, fmt.Errorf("records: %w", err)
	}
	return s, nil
}

// Close writes the pulls and denials not yet written. The MetaStore stays
// open (its owner closes it).
func (s *Store) Close() error {
	ctx := context.Background()
	if err := s.FlushPulls(ctx); err != nil {
		s.log.Error("recording pulls", "err", err)
	}
	if err := s.FlushDenials(ctx); err != nil {
		s.log.Error("recording denials; the queued ones are lost", "err", err)
	}
	return nil
}

// VerdictKey binds a verdict to what produced it: the manifest, the
// repository it was judged in (its signatures and its blob index entries
// are that repository's), the rule and the DB.
func VerdictKey(dgst, upstream, repo, policyHash, dbv string) string {
	return dgst + "|" + upstream + "/" + repo + "|" + policyHash + "|" + dbv
}

// SignatureKey binds a signature result to the manifest, the repository
// its signatures were fetched from and the rule's hash.
func SignatureKey(dgst, upstream, repo, ruleHash string) string {
	return dgst + "|" + upstream + "/" + repo + "|" + ruleHash
}

// get reads table[key] into v; found is false when there is none.
func get(tx storage.Tx, table, key string, v any) (found bool, err error) {
	b, err := tx.Get(table, []byte(key))
	if err != nil || b == nil {
		return false, err
	}
	return true, json.Unmarshal(b, v)
}

// put writes v as table[key].
func put(tx storage.Tx, table, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return tx.Put(table, []byte(key), b)
}

// Verdict returns the verdict stored under key (see VerdictKey), or nil.
// A record that does not decode is none.
func (s *Store) Verdict(ctx context.Context, key string) (*Verdict, error) {
	var v Verdict
	var found bool
	err := s.meta.View(ctx, func(tx storage.Tx) error {
		var err error
		found, err = get(tx, tableVerdicts, key, &v)
		return err
	})
	if err != nil || !found {
		return nil, nil
	}
	return &v, nil
}

// Report returns the stored scan report of a manifest, made with any DB,
// or ErrNotFound.
func (s *Store) Report(ctx context.Context, dgst string) (*StoredReport, error) {
	var rep StoredReport
	var found bool
	err := s.meta.View(ctx, func(tx storage.Tx) error {
		var err error
		found, err = get(tx, tableReports, dgst, &rep)
		return err
	})
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, ErrNotFound
	}
	return &rep, nil
}

// PutReport stores a manifest's scan report.
func (s *Store) PutReport(ctx context.Context, dgst string, rep *StoredReport) error {
	return s.meta.Update(ctx, func(tx storage.Tx) error { return put(tx, tableReports, dgst, rep) })
}

// Signature returns the signature result stored under key (see
// SignatureKey), or nil.
func (s *Store) Signature(ctx context.Context, key string) *SignatureResult {
	var res SignatureResult
	var found bool
	err := s.meta.View(ctx, func(tx storage.Tx) error {
		var err error
		found, err = get(tx, tableSignatures, key, &res)
		return err
	})
	if err != nil || !found {
		return nil
	}
	return &res
}

// PutSignature stores a signature result under key (nil: none).
func (s *Store) PutSignature(ctx context.Context, key string, res *SignatureResult) error {
	if res == nil {
		return nil
	}
	return s.meta.Update(ctx, func(tx storage.Tx) error { return put(tx, tableSignatures, key, res) })
}

// PutVerdict stores v under key, records the image, and records which
// blobs it opens or closes, in one transaction.
func (s *Store) PutVerdict(ctx context.Context, key string, m *Manifest, v *Verdict) error {
	return s.meta.Update(ctx, func(tx storage.Tx) error {
		if err := put(tx, tableVerdicts, key, v); err != nil {
			return err
		}
		if err := s.putImage(tx, m, v); err != nil {
			return err
		}
		return setBlobRefs(tx, m, v)
	})
}

// Record records the image and a verdict that is not stored under a
// verdict key (audit without scan, a scan limit): the blobs of an admitted
// one may be served.
func (s *Store) Record(ctx context.Context, m *Manifest, v *Verdict) error {
	return s.meta.Update(ctx, func(tx storage.Tx) error {
		if err := s.putImage(tx, m, v); err != nil {
			return err
		}
		return setBlobRefs(tx, m, v)
	})
}

// RecordImage records the image with a verdict that is neither stored
// under its key nor changes the blob index (a denial that may not last).
func (s *Store) RecordImage(ctx context.Context, m *Manifest, v *Verdict) error {
	return s.meta.Update(ctx, func(tx storage.Tx) error { return s.putImage(tx, m, v) })
}

func (s *Store) putImage(tx storage.Tx, m *Manifest, v *Verdict) error {
	var rec ImageRecord
	if b, _ := tx.Get(tableImages, []byte(m.Digest.String())); b != nil {
		_ = json.Unmarshal(b, &rec)
	}
	if rec.Digest == "" {
		// The verdict's kind says "artifact" for what passed by media type.
		kind := cmp.Or(v.Kind, m.Kind)
		rec = ImageRecord{Digest: m.Digest.String(), Upstream: m.Upstream, Repo: m.Repo, MediaType: m.MediaType, Kind: kind,
			Config: m.Config.Digest.String(), FirstSeen: s.now(), Tags: []string{}}
		for _, l := range m.Layers {
			rec.Layers = append(rec.Layers, LayerRef{Digest: l.Digest.String(), Size: l.Size, MediaType: l.MediaType})
		}
	}
	for i := range rec.Layers {
		if rec.Layers[i].DiffID == "" && i < len(m.DiffIDs) && len(m.DiffIDs) == len(rec.Layers) {
			rec.Layers[i].DiffID = m.DiffIDs[i].String()
		}
	}
	if m.Tag != "" && !slices.Contains(rec.Tags, m.Tag) {
		rec.Tags = append(rec.Tags, m.Tag)
	}
	// Records written before these fields existed get them on the next
	// judgement.
	if rec.ArtifactType == "" {
		rec.ArtifactType = m.ArtifactType
	}
	if rec.Platform == "" {
		rec.Platform = m.Platform
	}
	rec.Latest = v
	return put(tx, tableImages, m.Digest.String(), &rec)
}

// NoteTag adds a newly seen tag to a judged image's record. Each pair is
// looked up once per process: the hot path of a manifest judged before
// costs a map lookup.
func (s *Store) NoteTag(ctx context.Context, dgst, tag string) {
	if tag == "" {
		return
	}
	seen := dgst + "\x00" + tag
	s.mu.Lock()
	_, done := s.tags[seen]
	if !done {
		if len(s.tags) >= maxMemo {
			clear(s.tags)
		}
		s.tags[seen] = struct{}{}
	}
	s.mu.Unlock()
	if done {
		return
	}
	var known bool
	_ = s.meta.View(ctx, func(tx storage.Tx) error {
		var rec ImageRecord
		if found, err := get(tx, tableImages, dgst, &rec); found && err == nil {
			known = slices.Contains(rec.Tags, tag)
		}
		return nil
	})
	if known {
		return
	}
	_ = s.meta.Update(context.WithoutCancel(ctx), func(tx storage.Tx) error {
		var rec ImageRecord
		if found, err := get(tx, tableImages, dgst, &rec); !found || err != nil {
			return nil
		}
		rec.Tags = append(rec.Tags, tag)
		return put(tx, tableImages, dgst, &rec)
	})
}
