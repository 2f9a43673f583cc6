package gate

import (
	"context"

	"github.com/gatehouse/gatehouse/gate/policy"
	"github.com/gatehouse/gatehouse/gate/records"
)

// recorded is what the records store keeps of a judged manifest.
func recorded(s *Subject, info *manifestInfo) *records.Manifest {
	return &records.Manifest{Upstream: s.Upstream, Repo: s.Repo, Tag: s.Tag, Digest: s.Digest, MediaType: s.MediaType,
		Kind: info.kind, ArtifactType: info.artifactType, Platform: info.platform,
		Config: info.config, Layers: info.layers, DiffIDs: info.diffIDs}
}

// fromRecord is a manifest as its record describes it, to be judged again
// without the manifest itself (Reevaluate).
func fromRecord(m *records.Manifest) (*Subject, *manifestInfo) {
	return &Subject{Upstream: m.Upstream, Repo: m.Repo, Digest: m.Digest, MediaType: m.MediaType},
		&manifestInfo{kind: m.Kind, artifactType: m.ArtifactType, platform: m.Platform,
			config: m.Config, layers: m.Layers, diffIDs: m.DiffIDs}
}

// report returns the stored scan report of a manifest made with DB dbv,
// or records.ErrNotFound.
func (g *Gate) report(ctx context.Context, dgst, dbv string) (*records.StoredReport, error) {
	rep, err := g.records.Report(ctx, dgst)
	if err != nil {
		return nil, err
	}
	if rep.DBVersion != dbv {
		return nil, records.ErrNotFound
	}
	return rep, nil
}

// store remembers v under key and records it with the image and which
// blobs it admits.
func (g *Gate) store(ctx context.Context, key string, s *Subject, info *manifestInfo, v *Verdict) error {
	g.remember(key, v)
	return g.records.PutVerdict(ctx, key, recorded(s, info), v)
}

// record records the image and a verdict that is not stored under its
// verdict key (audit without scan, a scan limit): the blobs of an admitted
// one may be served.
func (g *Gate) record(ctx context.Context, s *Subject, info *manifestInfo, v *Verdict) {
	if err := g.records.Record(ctx, recorded(s, info), v); err != nil {
		g.log.Error("recording judged manifest", "err", err)
	}
}

// recordImage records the image with a verdict that is neither stored
// under its key nor changes the blob index (a denial that may not last).
func (g *Gate) recordImage(ctx context.Context, s *Subject, info *manifestInfo, v *Verdict) {
	if err := g.records.RecordImage(ctx, recorded(s, info), v); err != nil {
		g.log.Error("recording judged manifest", "err", err)
	}
}

// notePull counts a GET of a judged manifest (in memory; see FlushPulls).
func (g *Gate) notePull(s *Subject) {
	if s.Pull {
		g.records.NotePull(s.Digest.String())
	}
}

// FlushPulls adds the pulls counted since the last flush to the image
// records. serve calls it periodically and Close calls it once more.
func (g *Gate) FlushPulls() error { return g.records.FlushPulls(context.Background()) }

// RunDenials writes queued denials every gate.denials.flushInterval, and
// at once when a batch is queued, until ctx ends; Close writes what is
// left.
func (g *Gate) RunDenials(ctx context.Context) { g.records.RunDenials(ctx) }

// The read model (the JSON API's and the console's): what the records say,
// and the policy and DB they were judged with.

// Images lists judged manifests, newest first.
func (g *Gate) Images(ctx context.Context) ([]records.ImageSummary, error) {
	return g.records.Images(ctx)
}

// Image returns one judged manifest with every vulnerability found, or
// records.ErrNotFound.
func (g *Gate) Image(ctx context.Context, dgst string) (*records.ImageDetail, error) {
	return g.records.Image(ctx, dgst)
}

// Denials returns recent refused pulls, newest first.
func (g *Gate) Denials() []records.Denial { return g.records.Denials() }

// Policy returns the loaded policy.
func (g *Gate) Policy() *policy.Policy { return g.policy }

// DBVersion identifies the vulnerability DB verdicts are judged with; ""
// when none is loaded.
func (g *Gate) DBVersion() string {
	if g.dbv != nil {
		return g.dbv()
	}
	return g.scanner.DBVersion()
}
