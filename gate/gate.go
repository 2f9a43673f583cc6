package gate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/events"
	"github.com/gatehouse/gatehouse/gate/policy"
	"github.com/gatehouse/gatehouse/gate/records"
	"github.com/gatehouse/gatehouse/metrics"
	"github.com/gatehouse/gatehouse/storage"
)

// BlobOpener reads a blob of an upstream repository through gatehouse's
// cache, joining any fetch of it already under way.
type BlobOpener interface {
	OpenBlob(ctx context.Context, upstream, repo string, dgst v1.Hash) (io.ReadCloser, int64, error)
}

// Options configure a Gate.
type Options struct {
	Config *config.Gate
	// Meta holds the gate's records (verdicts, reports, image records, the
	// blob index, denials). Required. The caller owns it: the gate never
	// closes it, and the caller closes it after Gate.Close.
	Meta    storage.MetaStore
	Scanner Scanner
	// Signatures verifies signatures for rules that have a signatures
	// section; required when any rule has one.
	Signatures SignatureVerifier
	// Attestations finds verified attestations for rules that require
	// them or accept attached VEX; required when any rule does.
	Attestations AttestationVerifier
	// VEX applies the VEX statements of rules with a vex section;
	// required when any rule has one.
	VEX   VEXFilter
	Blobs BlobOpener
	// Cluster, when set, makes each scan one for the whole cluster of
	// replicas sharing Meta (package cluster). Nil: one replica.
	Cluster Cluster
	// DBVersion, when set, is the vulnerability DB version verdicts are
	// judged with: the cluster's (one version for every replica). A scan
	// is made only when the scanner's own DB is that version; until the
	// replica adopted it, images nobody judged yet wait (503, retry).
	// Default: the scanner's version.
	DBVersion func() string
	// DBBuilt, when set, is when the loaded vulnerability DB was built
	// (zero: none), for gate.db.maxAge.
	DBBuilt func() time.Time
	// Events receives the gate's events (pull denied, verdict changed).
	// Default: none sent.
	Events events.Publisher
	// Exceptions, when set, are the scoped vulnerability exceptions
	// (gate.exceptions) applied on top of each rule's allowlist.
	Exceptions Exceptions
	Log        *slog.Logger
	Now        func() time.Time // default time.Now
}

// Cluster runs work once among the replicas sharing the gate's records.
type Cluster interface {
	// Once runs do unless have reports the work done, with one replica
	// at a time running it for name; a replica that finds another running
	// it waits for it and asks have again.
	Once(ctx context.Context, kind, name string, have func(context.Context) (bool, error), do func(context.Context) error) error
}

// Gate judges manifests. It is safe for concurrent use.
type Gate struct {
	cfg     *config.Gate
	policy  *policy.Policy
	scanner Scanner
	sigs    SignatureVerifier
	atts    AttestationVerifier
	vex     VEXFilter
	blobs   BlobOpener
	cluster Cluster
	dbv     func() string
	dbBuilt func() time.Time
	events  events.Publisher
	excepts Exceptions
	records *records.Store
	log     *slog.Logger
	now     func() time.Time
	pass    map[string]bool

	mu        sync.Mutex
	jobs      map[string]*job
	memo      map[string]*Verdict // verdict key → verdict, the hot path
	parents   map[string]v1.Hash  // upstream/repo/platform manifest → the index that listed it
	platforms map[string]string   // upstream/repo/platform manifest → os/arch of its index entry
	failures  *failureMemo        // failed scans, retried after a back-off
	closed    bool
	closing   chan struct{}
	wg        sync.WaitGroup
	sem       chan struct{}
}

type job struct {
	done    chan struct{}
	verdict *Verdict
	err     error
}

// New opens the gate's records in opts.Meta (migrating those of earlier
// versions, loading the denial log) and returns the gate.
func New(opts Options) (*Gate, error) {
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Events == nil {
		opts.Events = events.Nop{}
	}
	if opts.Meta == nil {
		return nil, errors.New("gate: no metadata store")
	}
	for _, r := range opts.Config.Policy.Rules {
		if r.Signatures != nil && opts.Signatures == nil {
			return nil, fmt.Errorf("gate: rule %q verifies signatures but no signature verifier is configured", r.Name)
		}
		if needsAttestations(&policy.Rule{Rule: r}) && opts.Attestations == nil {
			return nil, fmt.Errorf("gate: rule %q reads attestations but no attestation verifier is configured", r.Name)
		}
		if r.VEX != nil && opts.VEX == nil {
			return nil, fmt.Errorf("gate: rule %q applies VEX but no VEX filter is configured", r.Name)
		}
	}
	recs, err := records.Open(context.Background(), opts.Meta, records.Options{Denials: opts.Config.Denials, Log: opts.Log, Now: opts.Now,
		Shared: opts.Cluster != nil})
	if err != nil {
		return nil, fmt.Errorf("gate: %w", err)
	}
	g := &Gate{
		cfg:       opts.Config,
		policy:    policy.New(opts.Config.Policy.Rules, opts.Config.PassArtifactTypes...),
		scanner:   opts.Scanner,
		sigs:      opts.Signatures,
		atts:      opts.Attestations,
		vex:       opts.VEX,
		blobs:     opts.Blobs,
		cluster:   opts.Cluster,
		dbv:       opts.DBVersion,
		dbBuilt:   opts.DBBuilt,
		events:    opts.Events,
		excepts:   opts.Exceptions,
		records:   recs,
		log:       opts.Log,
		now:       opts.Now,
		pass:      map[string]bool{},
		jobs:      map[string]*job{},
		memo:      map[string]*Verdict{},
		parents:   map[string]v1.Hash{},
		platforms: map[string]string{},
		failures:  newFailureMemo(),
		closing:   make(chan struct{}),
		sem:       make(chan struct{}, opts.Config.ScanConcurrency),
	}
	for _, t := range opts.Config.PassArtifactTypes {
		g.pass[t] = true
	}
	metrics.InitGateDecisions(decisionSeries(opts.Config.Policy.Rules))
	return g, nil
}

// decisionSeries lists the decisions each rule in force can give on a
// scanned image (the built-in default rule too, unless a rule matches
// every repository), whose gatehouse_gate_decisions_total series are
// created at 0 so that a dashboard shows the rules before their first pull.
func decisionSeries(rules []config.Rule) []metrics.Decision {
	catchAll := slices.ContainsFunc(rules, func(r config.Rule) bool { return len(r.Upstreams) == 0 && len(r.Repositories) == 0 })
	if !catchAll {
		rules = append(slices.Clip(rules), config.DefaultRule())
	}
	var ds []metrics.Decision
	for _, r := range rules {
		switch r.Mode {
		case config.ModeOff:
			ds = append(ds, metrics.Decision{Result: "admitted", Reason: ReasonOff, Rule: r.Name})
		case config.ModeAudit:
			ds = append(ds, metrics.Decision{Result: "admitted", Reason: ReasonClean, Rule: r.Name},
				metrics.Decision{Result: "admitted", Reason: ReasonAudit, Rule: r.Name})
		default:
			ds = append(ds, metrics.Decision{Result: "admitted", Reason: ReasonClean, Rule: r.Name},
				metrics.Decision{Result: "denied", Reason: ReasonVulnerable, Rule: r.Name})
			if r.Signatures != nil && r.Signatures.Required {
				ds = append(ds, metrics.Decision{Result: "denied", Reason: ReasonUnsigned, Rule: r.Name})
			}
			if r.Attestations != nil {
				ds = append(ds, metrics.Decision{Result: "denied", Reason: ReasonAttestation, Rule: r.Name})
			}
		}
	}
	return ds
}

// Close stops running scans and writes the pulls and denials not yet
// written. It does not close Options.Meta: its owner does, afterwards.
func (g *Gate) Close() error {
	g.mu.Lock()
	if !g.closed {
		g.closed = true
		close(g.closing)
	}
	g.mu.Unlock()
	g.wg.Wait()
	return g.records.Close()
}

// Check judges a manifest before it is served. It returns the verdict
// (admitted or not), a *Pending when the verdict is not ready within
// gate.maxWait, or an error (fail closed) when the image cannot be judged.
func (g *Gate) Check(ctx context.Context, s Subject) (*Verdict, error) {
	if types.MediaType(s.MediaType).IsIndex() {
		// Indexes are served; each platform manifest is judged when asked
		// for, and may be admitted by its index's signature. (An index that
		// also carries a config or layers, which a lenient client could run
		// as an image, never gets here: the content layer refuses it.)
		g.noteIndex(&s)
		return &Verdict{Digest: s.Digest.String(), Admitted: true, Kind: "index", Reason: ReasonIndex, Message: "index"}, nil
	}
	rule := g.policy.Match(s.Upstream, s.Repo)
	dbv := ""
	if rule.Scans() {
		dbv = g.DBVersion()
	}
	key := verdictKey(&s, rule.Hash, dbv)
	// The hot path: a manifest judged before costs a map lookup.
	if v := g.cached(ctx, key); v != nil {
		g.records.NoteTag(ctx, s.Digest.String(), s.Tag)
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
	case dbv == "" && rule.Scans():
		return g.failed(ctx, &s, info, rule, dbv, ErrNoDB)
	}
	if v == nil {
		if err := g.failures.check(s.Upstream, s.Digest, g.now()); err != nil {
			metrics.ScanBackoffRefusals.Inc()
			return g.failed(ctx, &s, info, rule, dbv, err)
		}
		return g.await(ctx, s, info, rule, dbv, key)
	}
	if err := g.store(context.WithoutCancel(ctx), key, &s, info, v); err != nil {
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
		return g.failed(ctx, &s, info, rule, dbv, j.err)
	}
	g.notePull(&s)
	return g.deny(j.verdict, &s), nil
}

// deny records a refused pull in the denial log and passes v through.
func (g *Gate) deny(v *Verdict, s *Subject) *Verdict {
	if !v.Admitted && !s.Ahead {
		g.records.AddDenial(records.Denial{Time: g.now(), Client: s.Client, Upstream: s.Upstream, Repo: s.Repo, Tag: s.Tag,
			Digest: s.Digest.String(), Rule: ruleName(v), Message: v.Message})
		g.events.Publish(events.Denied(g.now(), events.PullDeniedData{Upstream: s.Upstream, Repository: s.Repo, Tag: s.Tag,
			Digest: s.Digest.String(), Rule: ruleName(v), Reason: v.Reason, Message: v.Message, Client: s.Client}))
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
func (g *Gate) failed(ctx context.Context, s *Subject, info *manifestInfo, rule *policy.Rule, dbv string, err error) (*Verdict, error) {
	var p *Pending
	if errors.As(err, &p) {
		return nil, err
	}
	if rule.Mode == config.ModeAudit {
		g.log.Warn("scan failed; serving under audit mode", "upstream", s.Upstream, "repo", s.Repo, "digest", s.Digest, "rule", rule.Name, "err", err)
		v := &Verdict{Digest: s.Digest.String(), Upstream: s.Upstream, Repo: s.Repo, Admitted: true, Kind: "image", Rule: rule.Name, Reason: ReasonScanError,
			Message:    fmt.Sprintf("not scanned (%v); admitted because rule %q is in audit mode", err, rule.Name),
			PolicyHash: rule.Hash, DBVersion: dbv, JudgedAt: g.now()}
		g.record(context.WithoutCancel(ctx), s, info, v)
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

// verdictKey binds a verdict to what produced it (see records.VerdictKey).
func verdictKey(s *Subject, policyHash, dbv string) string {
	return records.VerdictKey(s.Digest.String(), s.Upstream, s.Repo, policyHash, dbv)
}

// cached returns a stored verdict that is still valid (an allowlist entry
// it relied on has not expired).
func (g *Gate) cached(ctx context.Context, key string) *Verdict {
	g.mu.Lock()
	v := g.memo[key]
	g.mu.Unlock()
	if v == nil {
		if v, _ = g.records.Verdict(ctx, key); v == nil {
			return nil
		}
		g.remember(key, v)
	}
	if v.Decision != nil && !v.Decision.ValidUntil.IsZero() && !g.now().Before(v.Decision.ValidUntil) {
		return nil
	}
	if !g.exceptionsHold(v) {
		return nil // an exception was withdrawn or added since
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
