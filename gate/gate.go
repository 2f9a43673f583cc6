package gate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	bolt "go.etcd.io/bbolt"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/gate/policy"
	"github.com/gatehouse/gatehouse/metrics"
)

// BlobOpener reads a blob of an upstream repository through gatehouse's
// cache, joining any fetch of it already under way.
type BlobOpener interface {
	OpenBlob(ctx context.Context, upstream, repo string, dgst v1.Hash) (io.ReadCloser, int64, error)
}

// Options configure a Gate.
type Options struct {
	Config  *config.Gate
	DataDir string // the verdict database (and denial record) is DataDir/gate.db
	Scanner Scanner
	// Signatures verifies signatures for rules that have a signatures
	// section; required when any rule has one.
	Signatures SignatureVerifier
	Blobs      BlobOpener
	Log        *slog.Logger
	Now        func() time.Time // default time.Now
}

// Gate judges manifests. It is safe for concurrent use.
type Gate struct {
	cfg     *config.Gate
	policy  *policy.Policy
	scanner Scanner
	sigs    SignatureVerifier
	blobs   BlobOpener
	db      *bolt.DB
	log     *slog.Logger
	now     func() time.Time
	pass    map[string]bool

	mu        sync.Mutex
	jobs      map[string]*job
	memo      map[string]*Verdict   // verdict key → verdict, the hot path
	tags      map[string]struct{}   // digest+tag pairs already recorded
	parents   map[string]v1.Hash    // upstream/repo/platform manifest → the index that listed it
	platforms map[string]string     // upstream/repo/platform manifest → os/arch of its index entry
	failures  *failureMemo          // failed scans, retried after a back-off
	pulls     map[string]*pullCount // manifest → pulls not yet flushed
	closed    bool
	closing   chan struct{}
	wg        sync.WaitGroup
	sem       chan struct{}

	denials *denialLog
}

type job struct {
	done    chan struct{}
	verdict *Verdict
	err     error
}

var (
	bucketVerdicts = []byte("verdicts") // digest|upstream/repo|policyHash|dbVersion → Verdict
	bucketReports  = []byte("reports")  // digest → storedReport
	bucketImages   = []byte("images")   // digest → ImageRecord
	// bucketSignatures holds signature results, each bound to the image,
	// the repository its signatures were fetched from and the rule (by
	// hash: its identities, key bytes and trusted root) they were verified
	// against: digest|upstream/repo|rule hash → SignatureResult. A result
	// is reused only under the same key; another rule or a rotated key
	// verifies again.
	bucketSignatures = []byte("signatures")
)

// storedReport is a scan report with the time it was made. (Reports of
// earlier versions also held one signature result per digest, bound to
// nothing; it is ignored.)
type storedReport struct {
	Report
	ScannedAt time.Time `json:"scannedAt"`
}

// New opens the verdict database and returns the gate.
func New(opts Options) (*Gate, error) {
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	db, err := bolt.Open(filepath.Join(opts.DataDir, "gate.db"), 0o640, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("gate: %w", err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketVerdicts, bucketReports, bucketImages, bucketBlobRefs, bucketDenials, bucketSignatures} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		for _, b := range oldBlobBuckets {
			if tx.Bucket(b) != nil {
				if err := tx.DeleteBucket(b); err != nil {
					return err
				}
			}
		}
		return nil
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("gate: %w", err)
	}
	g := &Gate{
		cfg:       opts.Config,
		policy:    policy.New(opts.Config.Policy.Rules, opts.Config.PassArtifactTypes...),
		scanner:   opts.Scanner,
		blobs:     opts.Blobs,
		db:        db,
		log:       opts.Log,
		now:       opts.Now,
		pass:      map[string]bool{},
		jobs:      map[string]*job{},
		memo:      map[string]*Verdict{},
		tags:      map[string]struct{}{},
		parents:   map[string]v1.Hash{},
		platforms: map[string]string{},
		failures:  newFailureMemo(),
		pulls:     map[string]*pullCount{},
		sigs:      opts.Signatures,
		closing:   make(chan struct{}),
		sem:       make(chan struct{}, opts.Config.ScanConcurrency),
		denials:   newDenialLog(opts.Config.Denials.Keep),
	}
	for _, t := range opts.Config.PassArtifactTypes {
		g.pass[t] = true
	}
	for _, r := range opts.Config.Policy.Rules {
		if r.Signatures != nil && g.sigs == nil {
			db.Close()
			return nil, fmt.Errorf("gate: rule %q verifies signatures but no signature verifier is configured", r.Name)
		}
	}
	if err := g.loadDenials(); err != nil {
		db.Close()
		return nil, fmt.Errorf("gate: %w", err)
	}
	return g, nil
}

// Close stops running scans, writes the pulls and denials not yet
// written, and closes the verdict database.
func (g *Gate) Close() error {
	g.mu.Lock()
	if !g.closed {
		g.closed = true
		close(g.closing)
	}
	g.mu.Unlock()
	g.wg.Wait()
	if err := g.FlushPulls(); err != nil {
		g.log.Error("recording pulls", "err", err)
	}
	if err := g.FlushDenials(); err != nil {
		g.log.Error("recording denials; the queued ones are lost", "err", err)
	}
	return g.db.Close()
}

// Policy returns the loaded policy.
func (g *Gate) Policy() *policy.Policy { return g.policy }

// Check judges a manifest before it is served. It returns the verdict
// (admitted or not), a *Pending when the verdict is not ready within
// gate.maxWait, or an error (fail closed) when the image cannot be judged.
func (g *Gate) Check(ctx context.Context, s Subject) (*Verdict, error) {
	if types.MediaType(s.MediaType).IsIndex() {
		// Indexes are served; each platform manifest is judged when asked
		// for, and may be admitted by its index's signature. An index that
		// also carries a config or layers could be read as an image by a
		// lenient client: refuse it rather than serve it unjudged.
		if err := checkIndex(s.Manifest); err != nil {
			return nil, err
		}
		g.noteIndex(&s)
		return &Verdict{Digest: s.Digest.String(), Admitted: true, Kind: "index", Reason: ReasonIndex, Message: "index"}, nil
	}
	rule := g.policy.Match(s.Upstream, s.Repo)
	dbv := ""
	if rule.Mode != config.ModeOff {
		dbv = g.scanner.DBVersion()
	}
	key := verdictKey(&s, rule.Hash, dbv)
	// The hot path: a manifest judged before costs a map lookup.
	if v := g.cached(key); v != nil {
		g.noteTag(&s)
		g.notePull(&s)
		return g.deny(v, &s), nil
	}
	info, err := parseManifest(&s)
	if err != nil {
		return nil, err
	}
	info.platform = g.platform(&s)
	var v *Verdict
	switch {
	case g.isArtifact(info):
		v = &Verdict{Digest: s.Digest.String(), Upstream: s.Upstream, Repo: s.Repo, Admitted: true, Kind: "artifact", Rule: rule.Name,
			Reason: ReasonArtifact, Message: "non-image artifact (" + info.artifactType + ") passed by media type", PolicyHash: rule.Hash, JudgedAt: g.now()}
	case rule.Mode == config.ModeOff:
		v = &Verdict{Digest: s.Digest.String(), Upstream: s.Upstream, Repo: s.Repo, Admitted: true, Kind: "image", Rule: rule.Name,
			Reason: ReasonOff, Message: fmt.Sprintf("rule %q is off", rule.Name), PolicyHash: rule.Hash, JudgedAt: g.now()}
	case dbv == "":
		return g.failed(&s, info, rule, dbv, ErrNoDB)
	}
	if v == nil {
		if err := g.failures.check(s.Upstream, s.Digest, g.now()); err != nil {
			metrics.ScanBackoffRefusals.Inc()
			return g.failed(&s, info, rule, dbv, err)
		}
		return g.await(ctx, s, info, rule, dbv, key)
	}
	if err := g.store(key, &s, info, v); err != nil {
		g.log.Error("storing verdict", "err", err)
	}
	g.notePull(&s)
	return v, nil
}

// await joins the judgement of s under key, starting it when none runs,
// and waits for it at most gate.maxWait: a longer one goes on in the
// background and the client gets a *Pending.
func (g *Gate) await(ctx context.Context, s Subject, info *manifestInfo, rule *policy.Rule, dbv, key string) (*Verdict, error) {
	g.mu.Lock()
	j, running := g.jobs[key]
	if !running {
		if g.closed {
			g.mu.Unlock()
			return nil, errors.New("gatehouse is shutting down")
		}
		j = &job{done: make(chan struct{})}
		g.jobs[key] = j
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			j.verdict, j.err = g.judge(context.WithoutCancel(ctx), s, info, rule, dbv, key)
			g.failures.done(s.Upstream, s.Digest, j.err, g.now())
			g.mu.Lock()
			delete(g.jobs, key)
			g.mu.Unlock()
			close(j.done)
		}()
	}
	g.mu.Unlock()

	t := time.NewTimer(g.cfg.MaxWait.D())
	defer t.Stop()
	select {
	case <-j.done:
	case <-t.C:
		return nil, &Pending{RetryAfter: 10 * time.Second}
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if j.err != nil {
		return g.failed(&s, info, rule, dbv, j.err)
	}
	g.notePull(&s)
	return g.deny(j.verdict, &s), nil
}

// deny records a refused pull in the denial log and passes v through.
func (g *Gate) deny(v *Verdict, s *Subject) *Verdict {
	if !v.Admitted {
		g.denials.add(Denial{Time: g.now(), Client: s.Client, Upstream: s.Upstream, Repo: s.Repo, Tag: s.Tag,
			Digest: s.Digest.String(), Rule: ruleName(v), Message: v.Message})
	}
	return v
}

func ruleName(v *Verdict) string {
	if v.Decision != nil {
		return v.Decision.Rule
	}
	return v.Rule
}

// failed handles a scan that could not be made: an error (fail closed),
// or, under a rule in audit mode, an admitted verdict that says why.
func (g *Gate) failed(s *Subject, info *manifestInfo, rule *policy.Rule, dbv string, err error) (*Verdict, error) {
	var p *Pending
	if errors.As(err, &p) {
		return nil, err
	}
	if rule.Mode == config.ModeAudit {
		g.log.Warn("scan failed; serving under audit mode", "upstream", s.Upstream, "repo", s.Repo, "digest", s.Digest, "rule", rule.Name, "err", err)
		v := &Verdict{Digest: s.Digest.String(), Upstream: s.Upstream, Repo: s.Repo, Admitted: true, Kind: "image", Rule: rule.Name, Reason: ReasonScanError,
			Message:    fmt.Sprintf("not scanned (%v); admitted because rule %q is in audit mode", err, rule.Name),
			PolicyHash: rule.Hash, DBVersion: dbv, JudgedAt: g.now()}
		g.record(s, info, v)
		g.notePull(s)
		return v, nil
	}
	g.log.Error("scan failed; image refused (fail closed)", "upstream", s.Upstream, "repo", s.Repo, "digest", s.Digest, "rule", rule.Name, "err", err)
	se := &ScanError{Rule: rule.Name, Err: err}
	var be *BackoffError
	if errors.As(err, &be) {
		se.RetryAfter = be.RetryAfter
	}
	return nil, se
}

// verdictKey binds a verdict to what produced it: the manifest, the
// repository it was judged in (its signatures and its blob index entries
// are that repository's), the rule and the DB.
func verdictKey(s *Subject, policyHash, dbv string) string {
	return s.Digest.String() + "|" + s.Upstream + "/" + s.Repo + "|" + policyHash + "|" + dbv
}

// cached returns a stored verdict that is still valid (an allowlist entry
// it relied on has not expired).
func (g *Gate) cached(key string) *Verdict {
	g.mu.Lock()
	v := g.memo[key]
	g.mu.Unlock()
	if v == nil {
		_ = g.db.View(func(tx *bolt.Tx) error {
			if b := tx.Bucket(bucketVerdicts).Get([]byte(key)); b != nil {
				var dv Verdict
				if json.Unmarshal(b, &dv) == nil {
					v = &dv
				}
			}
			return nil
		})
		if v == nil {
			return nil
		}
		g.remember(key, v)
	}
	if v.Decision != nil && !v.Decision.ValidUntil.IsZero() && !g.now().Before(v.Decision.ValidUntil) {
		return nil
	}
	return v
}

const maxMemo = 16384

func (g *Gate) remember(key string, v *Verdict) {
	g.mu.Lock()
	if len(g.memo) >= maxMemo {
		clear(g.memo)
	}
	g.memo[key] = v
	g.mu.Unlock()
}
