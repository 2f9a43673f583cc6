package gate

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/gate/policy"
	"github.com/gatehouse/gatehouse/gate/records"
	"github.com/gatehouse/gatehouse/metrics"
)

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
			return g.overLimit(ctx, &s, info, rule, key, dbv, le), nil
		}
		return nil, err
	}
	if !rule.Scans() {
		// Signatures and attestations only: no scan, no DB, no report.
		return g.conclude(ctx, &s, info, rule, key, &records.StoredReport{}, g.evidence(ctx, &s, rule)), nil
	}
	rep, err := g.report(ctx, s.Digest.String(), dbv)
	evc := make(chan evidence, 1)
	go func() { evc <- g.evidence(ctx, &s, rule) }()
	if err != nil {
		var serr error
		if rep, serr = g.scanOnce(ctx, &s, info, dbv); serr != nil {
			<-evc
			var le *LimitError
			if errors.As(serr, &le) {
				metrics.ScanLimitsExceeded.WithLabelValues(le.Limit).Inc()
				return g.overLimit(ctx, &s, info, rule, key, dbv, le), nil
			}
			return nil, serr
		}
	}
	ev := <-evc
	if err := g.records.PutReport(ctx, s.Digest.String(), rep); err != nil {
		g.log.Error("storing scan report", "err", err)
	}
	return g.conclude(ctx, &s, info, rule, key, rep, ev), nil
}

// evidence is what an image carries besides its layers: its signature and
// attestations, as the rule asks for them.
type evidence struct {
	sig sigOutcome
	att *attOutcome // nil: the rule reads none
}

// lasting reports whether a denial made with this evidence may be stored:
// not when a signature or attestations could not be fetched.
func (e evidence) lasting() bool { return e.sig.lasting() && (e.att == nil || e.att.err == nil) }

func (g *Gate) evidence(ctx context.Context, s *Subject, rule *policy.Rule) evidence {
	return evidence{sig: g.verifySignature(ctx, s, rule), att: g.fetchAttestations(ctx, s, rule)}
}

// conclude decides on a report and a signature outcome and stores the
// verdict, unless it is a denial that must not outlast the request.
func (g *Gate) conclude(ctx context.Context, s *Subject, info *manifestInfo, rule *policy.Rule, key string, rep *records.StoredReport, ev evidence) *Verdict {
	sig := ev.sig
	v := g.decide(s, info, rule, rep, sig.res, ev.att)
	if !ev.lasting() && !v.Admitted {
		// Refuse this request, but judge again next time: an upstream
		// outage, or an index not seen (yet), must not become a lasting
		// denial. The image record shows the refusal meanwhile.
		g.recordImage(ctx, s, info, v)
		return v
	}
	if sig.lasting() {
		if err := g.putSignature(ctx, s, rule, sig.res); err != nil {
			g.log.Error("storing signature result", "err", err)
		}
	}
	if err := g.store(ctx, key, s, info, v); err != nil {
		g.log.Error("storing verdict", "err", err)
	}
	return v
}

// scanOnce scans the image with the DB of version dbv, once for the
// cluster: a replica that finds another scanning it waits for that
// replica's report. The report is stored before the scan's lease is
// released, so that the waiters find it.
func (g *Gate) scanOnce(ctx context.Context, s *Subject, info *manifestInfo, dbv string) (*records.StoredReport, error) {
	scan := func(ctx context.Context) (*records.StoredReport, error) {
		if v := g.scanner.DBVersion(); v != dbv {
			// The cluster moved to another DB and this replica has not
			// adopted it yet: no verdict of another version.
			g.log.Warn("vulnerability DB not adopted yet; the image waits", "have", v, "cluster", dbv, "digest", s.Digest)
			return nil, &Pending{RetryAfter: 5 * time.Second}
		}
		return g.scan(ctx, s, info)
	}
	if g.cluster == nil {
		return scan(ctx)
	}
	var rep *records.StoredReport
	have := func(ctx context.Context) (bool, error) {
		r, err := g.report(ctx, s.Digest.String(), dbv)
		if err == nil {
			rep = r
		}
		return err == nil, nil
	}
	err := g.cluster.Once(ctx, "scan", "scan/"+s.Digest.String()+"/"+dbv, have, func(ctx context.Context) error {
		r, err := scan(ctx)
		if err != nil {
			return err
		}
		rep = r
		return g.records.PutReport(ctx, s.Digest.String(), r)
	})
	if err != nil {
		return nil, err
	}
	return rep, nil
}

// scan scans the image, one of at most gate.scanConcurrency at a time.
// Closing gatehouse cancels it (and its reads); what is recorded after it
// uses ctx, not the scan's context.
func (g *Gate) scan(ctx context.Context, s *Subject, info *manifestInfo) (*records.StoredReport, error) {
	metrics.ScansQueued.Inc()
	select {
	case g.sem <- struct{}{}:
		metrics.ScansQueued.Dec()
	case <-g.closing:
		metrics.ScansQueued.Dec()
		return nil, errShutdown
	}
	metrics.ScansInFlight.Inc()
	sctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-g.closing:
			cancel()
		case <-sctx.Done():
		}
	}()
	start := time.Now()
	// A new image on the scan's context: closing gatehouse cancels its reads.
	r, err := g.scanner.Scan(sctx, newImage(sctx, g.blobs, s, info), s.Upstream+"/"+s.Repo+"@"+s.Digest.String())
	cancel()
	<-g.sem
	metrics.ScansInFlight.Dec()
	metrics.ScanDuration.Observe(time.Since(start).Seconds())
	if err != nil {
		metrics.ScanErrors.Inc()
		g.failures.learn(s.Upstream, info, err)
		return nil, err
	}
	g.log.Info("image scanned", "upstream", s.Upstream, "repo", s.Repo, "digest", s.Digest, "vulns", len(r.Vulns),
		"layers", r.Layers, "layersAnalysed", r.LayersAnalysed, "duration", time.Since(start), "db", r.DBVersion)
	return &records.StoredReport{Report: *r, ScannedAt: g.now()}, nil
}

// overLimit judges an image whose scan stopped at a layer past one of
// gate.scanLimits: denied (fail closed), or admitted with the reason under
// a rule in audit mode. The limits do not change while gatehouse runs, so
// the verdict is remembered in memory and a client retrying does not make
// gatehouse read the bomb again; it is not stored on disk, so raising a
// limit and restarting judges the image again.
func (g *Gate) overLimit(ctx context.Context, s *Subject, info *manifestInfo, rule *policy.Rule, key, dbv string, le *LimitError) *Verdict {
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
	g.record(ctx, s, info, v)
	return v
}

// decide applies rule to a scan report and a signature result (nil: not
// checked).
func (g *Gate) decide(s *Subject, info *manifestInfo, rule *policy.Rule, rep *records.StoredReport, sig *SignatureResult, att *attOutcome) *Verdict {
	var findings []policy.Finding
	var suppressed []Suppression
	if rule.Scans() { // a report kept from an earlier rule does not count under one that does not scan
		var vulns []Vuln
		vulns, suppressed = g.applyVEX(s, rule, rep.Vulns, att)
		for _, v := range vulns {
			findings = append(findings, policy.Finding{ID: v.ID, Severity: v.Severity, PkgName: v.PkgName, Installed: v.Installed, Fixed: v.Fixed, PURL: v.PURL})
		}
	}
	// Scoped exceptions (gate.exceptions) move what they cover out of
	// Blocking, and bound d.ValidUntil by their expiry.
	d := rule.EvaluateWith(findings, g.now(), g.exceptFor(s, g.now()))
	if !rule.Scans() && rule.Mode != config.ModeOff {
		d.Message = fmt.Sprintf("rule %q checks signatures only (vulnerabilities: off)", rule.Name)
	}
	v := &Verdict{Digest: s.Digest.String(), Upstream: s.Upstream, Repo: s.Repo, Admitted: d.Admitted, Kind: info.kind, Rule: rule.Name,
		Message: d.Message, Decision: &d, PolicyHash: rule.Hash, DBVersion: rep.DBVersion, ScannedAt: rep.ScannedAt, JudgedAt: g.now(),
		Suppressed: suppressed}
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
		refuse(v, rule, ReasonUnsigned, "signature required: "+sig.Reason)
	}
	if why := g.staleDB(rule); why != "" {
		if rule.StaleDB == config.StaleDBWarn {
			v.Warnings = append(v.Warnings, why)
			v.Message += "; warning: " + why
		} else {
			refuse(v, rule, ReasonStaleDB, why)
		}
	}
	var until time.Time
	v.Attestations, until = checkAttestations(rule.Attestations, att, g.now())
	if !until.IsZero() && (d.ValidUntil.IsZero() || until.Before(d.ValidUntil)) {
		// A scan attestation ages: judge again once it is too old.
		v.Decision.ValidUntil = until
	}
	for _, c := range failedChecks(v.Attestations) {
		refuse(v, rule, ReasonAttestation, "attestation required: "+c.Requirement+": "+c.Reason)
	}
	return v
}

// refuse adds a failed requirement to v: a denial for reason (the first
// one gives the message), a note in audit mode or on a denial already.
func refuse(v *Verdict, rule *policy.Rule, reason, why string) {
	switch {
	case rule.Mode == config.ModeAudit:
		v.Reason = ReasonAudit
		v.Message += "; " + why + " (audit mode)"
	case v.Admitted:
		v.Admitted, v.Reason = false, reason
		v.Message = fmt.Sprintf("denied by rule %q: %s", rule.Name, why)
	default:
		v.Message += "; " + why
	}
}

// staleDB says why the loaded DB is too old for a new verdict under rule
// (gate.db.maxAge), or "" when it is not, or the rule does not scan. A DB
// whose build time is unknown (none reported, or its status could not be
// read) counts as too old: fail closed.
func (g *Gate) staleDB(rule *policy.Rule) string {
	maxAge := g.cfg.DB.MaxAge.D()
	if maxAge <= 0 || !rule.Scans() {
		return ""
	}
	var built time.Time
	if g.dbBuilt != nil {
		built = g.dbBuilt()
	}
	if built.IsZero() {
		return fmt.Sprintf("the vulnerability DB's age is unknown (its build time could not be read), gate.db.maxAge %s", config.Duration(maxAge))
	}
	if age := g.now().Sub(built); age > maxAge {
		return fmt.Sprintf("the vulnerability DB is %s old, more than gate.db.maxAge %s", config.Duration(age.Round(time.Minute)), config.Duration(maxAge))
	}
	return ""
}
