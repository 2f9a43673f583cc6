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
	if err := g.failures.check(s.Upstream, s.Digest, g.now()); v == nil && err != nil {
		metrics.ScanBackoffRefusals.Inc()
		return g.failed(&s, info, rule, dbv, err)
	}
	if v != nil {
		if err := g.store(key, &s, info, v); err != nil {
			g.log.Error("storing verdict", "err", err)
		}
		g.notePull(&s)
		return v, nil
	}
	return g.await(ctx, s, info, rule, dbv, key)
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

// judge scans (or reuses a report made with the same DB) and decides.
func (g *Gate) judge(ctx context.Context, s Subject, info *manifestInfo, rule *policy.Rule, dbv, key string) (*Verdict, error) {
	img := newImage(ctx, g.blobs, &s, info)
	if err := readConfig(img, info); err != nil {
		return nil, err
	}
	// A layer blob an earlier scan found to break a limit, or to be other
	// than declared, ends this one before it starts.
	if err := g.failures.known(s.Upstream, info); err != nil {
		metrics.ScanBackoffRefusals.Inc()
		var le *LimitError
		if errors.As(err, &le) {
			return g.overLimit(&s, info, rule, key, dbv, le), nil
		}
		return nil, err
	}
	rep, err := g.report(s.Digest.String(), dbv)
	sigc := make(chan sigOutcome, 1)
	go func() { sigc <- g.verifySignature(ctx, &s, rule) }()
	if err != nil {
		metrics.ScansQueued.Inc()
		select {
		case g.sem <- struct{}{}:
			metrics.ScansQueued.Dec()
		case <-g.closing:
			metrics.ScansQueued.Dec()
			return nil, errShutdown
		}
		metrics.ScansInFlight.Inc()
		ctx, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-g.closing:
				cancel()
			case <-ctx.Done():
			}
		}()
		start := time.Now()
		r, serr := g.scanner.Scan(ctx, newImage(ctx, g.blobs, &s, info), s.Upstream+"/"+s.Repo+"@"+s.Digest.String())
		cancel()
		<-g.sem
		metrics.ScansInFlight.Dec()
		metrics.ScanDuration.Observe(time.Since(start).Seconds())
		if serr != nil {
			metrics.ScanErrors.Inc()
			g.failures.learn(s.Upstream, info, serr)
			<-sigc
			var le *LimitError
			if errors.As(serr, &le) {
				metrics.ScanLimitsExceeded.WithLabelValues(le.Limit).Inc()
				return g.overLimit(&s, info, rule, key, dbv, le), nil
			}
			return nil, serr
		}
		rep = &storedReport{Report: *r, ScannedAt: g.now()}
		g.log.Info("image scanned", "upstream", s.Upstream, "repo", s.Repo, "digest", s.Digest, "vulns", len(r.Vulns),
			"layers", r.Layers, "layersAnalysed", r.LayersAnalysed, "duration", time.Since(start), "db", r.DBVersion)
	}
	sig := <-sigc
	if err := g.putReport(s.Digest.String(), rep); err != nil {
		g.log.Error("storing scan report", "err", err)
	}
	v := g.decide(&s, info, rule, rep, sig.res)
	if !sig.lasting() && !v.Admitted {
		// Refuse this request, but judge again next time: an upstream
		// outage, or an index not seen (yet), must not become a lasting
		// denial. The image record shows the refusal meanwhile.
		g.recordImage(&s, info, v)
		return v, nil
	}
	if sig.lasting() {
		if err := g.putSignature(&s, rule, sig.res); err != nil {
			g.log.Error("storing signature result", "err", err)
		}
	}
	if err := g.store(key, &s, info, v); err != nil {
		g.log.Error("storing verdict", "err", err)
	}
	return v, nil
}

// overLimit judges an image whose scan stopped at a layer past one of
// gate.scanLimits: denied (fail closed), or admitted with the reason under
// a rule in audit mode. The limits do not change while gatehouse runs, so
// the verdict is remembered in memory and a client retrying does not make
// gatehouse read the bomb again; it is not stored on disk, so raising a
// limit and restarting judges the image again.
func (g *Gate) overLimit(s *Subject, info *manifestInfo, rule *policy.Rule, key, dbv string, le *LimitError) *Verdict {
	why := "scan failed: " + le.Error()
	v := &Verdict{Digest: s.Digest.String(), Upstream: s.Upstream, Repo: s.Repo, Kind: info.kind, Rule: rule.Name,
		Reason: ReasonScanLimit, PolicyHash: rule.Hash, DBVersion: dbv, JudgedAt: g.now()}
	if rule.Mode == config.ModeAudit {
		v.Admitted = true
		v.Message = fmt.Sprintf("not scanned (%s); admitted because rule %q is in audit mode", why, rule.Name)
		g.log.Warn("scan stopped by a scan limit; serving under audit mode", "upstream", s.Upstream, "repo", s.Repo, "digest", s.Digest, "rule", rule.Name, "err", le)
	} else {
		v.Message = fmt.Sprintf("denied by rule %q: %s", rule.Name, why)
		g.log.Error("scan stopped by a scan limit; image refused (fail closed)", "upstream", s.Upstream, "repo", s.Repo, "digest", s.Digest, "rule", rule.Name, "err", le)
	}
	g.remember(key, v)
	g.record(s, info, v)
	return v
}

// decide applies rule to a scan report and a signature result (nil: not
// checked).
func (g *Gate) decide(s *Subject, info *manifestInfo, rule *policy.Rule, rep *storedReport, sig *SignatureResult) *Verdict {
	findings := make([]policy.Finding, len(rep.Vulns))
	for i, v := range rep.Vulns {
		findings[i] = policy.Finding{ID: v.ID, Severity: v.Severity, PkgName: v.PkgName, Installed: v.Installed, Fixed: v.Fixed}
	}
	d := rule.Evaluate(findings, g.now())
	v := &Verdict{Digest: s.Digest.String(), Upstream: s.Upstream, Repo: s.Repo, Admitted: d.Admitted, Kind: info.kind, Rule: rule.Name,
		Message: d.Message, Decision: &d, PolicyHash: rule.Hash, DBVersion: rep.DBVersion, ScannedAt: rep.ScannedAt, JudgedAt: g.now()}
	switch {
	case !d.Admitted:
		v.Reason = ReasonVulnerable
	case len(d.Blocking) > 0:
		v.Reason = ReasonAudit
	default:
		v.Reason = ReasonClean
	}
	if sig == nil && rule.Signatures != nil {
		// Never checked (a report made before the rule asked for it).
		sig = &SignatureResult{Reason: "signature not verified"}
	}
	v.Signature = sig
	if sig != nil && rule.Signatures != nil && rule.Signatures.Required && !sig.Verified {
		why := "signature required: " + sig.Reason
		switch {
		case rule.Mode == config.ModeAudit:
			v.Reason = ReasonAudit
			v.Message += "; " + why + " (audit mode)"
		case v.Admitted:
			v.Admitted, v.Reason = false, ReasonUnsigned
			v.Message = fmt.Sprintf("denied by rule %q: %s", rule.Name, why)
		default:
			v.Message += "; " + why
		}
	}
	return v
}
