package scan

import (
	"context"
	"encoding/json"
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/gate"
)

// ForGate returns the Scanner as the gate uses it: reports whose inventory
// is stored as JSON, opaque to the gate.
func (s *Scanner) ForGate() gate.Scanner { return gateView{s} }

type gateView struct{ s *Scanner }

var _ gate.Scanner = gateView{}

func (g gateView) Scan(ctx context.Context, img v1.Image, name string) (*gate.Report, error) {
	r, err := g.s.Scan(ctx, img, name)
	if err != nil {
		return nil, err
	}
	return toGate(r)
}

func (g gateView) Rescan(ctx context.Context, inventory json.RawMessage) (*gate.Report, error) {
	var inv Inventory
	if err := json.Unmarshal(inventory, &inv); err != nil {
		return nil, fmt.Errorf("scan: stored inventory: %w", err)
	}
	r, err := g.s.Rescan(ctx, &inv)
	if err != nil {
		return nil, err
	}
	return toGate(r)
}

func (g gateView) DBVersion() string { return g.s.DBVersion() }

func toGate(r *Report) (*gate.Report, error) {
	inv, err := json.Marshal(&r.Inventory)
	if err != nil {
		return nil, fmt.Errorf("scan: encoding inventory: %w", err)
	}
	return &gate.Report{Inventory: inv, Vulns: r.Vulns, DBVersion: r.DBVersion,
		Warnings: r.Warnings, Layers: r.Layers, LayersAnalysed: r.LayersAnalysed}, nil
}
