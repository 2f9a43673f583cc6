package main

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"

	"github.com/gatehouse/gatehouse/gate"
)

// SARIF 2.1.0, the subset code-scanning tools read: one run, a rule per
// vulnerability id, a result per vulnerable package, located at the image.
type sarifLog struct {
	Schema  string     `json:"$schema"`
	Version string     `json:"version"`
	Runs    []sarifRun `json:"runs"`
}

type sarifRun struct {
	Tool struct {
		Driver struct {
			Name           string      `json:"name"`
			Version        string      `json:"version"`
			InformationURI string      `json:"informationUri"`
			Rules          []sarifRule `json:"rules"`
		} `json:"driver"`
	} `json:"tool"`
	Results    []sarifResult  `json:"results"`
	Properties map[string]any `json:"properties"`
}

type sarifRule struct {
	ID               string         `json:"id"`
	ShortDescription sarifText      `json:"shortDescription"`
	HelpURI          string         `json:"helpUri,omitempty"`
	Properties       map[string]any `json:"properties"`
}

type sarifText struct {
	Text string `json:"text"`
}

type sarifResult struct {
	RuleID    string          `json:"ruleId"`
	Level     string          `json:"level"`
	Message   sarifText       `json:"message"`
	Locations []sarifLocation `json:"locations"`
}

type sarifLocation struct {
	PhysicalLocation struct {
		ArtifactLocation struct {
			URI string `json:"uri"`
		} `json:"artifactLocation"`
	} `json:"physicalLocation"`
}

// notScannedRule is the SARIF rule of an image whose vulnerabilities are
// not known.
const notScannedRule = "gatehouse-not-scanned"

// sarifLevel maps a severity to a SARIF level, as Trivy's SARIF output does.
func sarifLevel(severity string) string {
	switch severity {
	case "CRITICAL", "HIGH":
		return "error"
	case "MEDIUM":
		return "warning"
	case "LOW", "UNKNOWN":
		return "note"
	}
	return "none"
}

func writeSARIF(w io.Writer, res *checkResult) error {
	var run sarifRun
	d := &run.Tool.Driver
	d.Name, d.Version, d.InformationURI = "gatehouse", version, "https://github.com/gatehouse/gatehouse"
	run.Results = []sarifResult{}
	run.Properties = map[string]any{"image": res.Image, "digest": res.Digest, "admitted": res.Verdict.Admitted, "verdict": res.Verdict.Message}
	run.Properties["scanned"] = res.Scanned
	if !res.Scanned {
		// No findings must never read as a clean scan.
		d.Rules = append(d.Rules, sarifRule{ID: notScannedRule, ShortDescription: sarifText{"image not scanned for vulnerabilities"},
			Properties: map[string]any{"tags": []string{"security"}}})
		r := sarifResult{RuleID: notScannedRule, Level: "error", Message: sarifText{"Not scanned: " + res.Verdict.Message}}
		var loc sarifLocation
		loc.PhysicalLocation.ArtifactLocation.URI = res.Image
		r.Locations = []sarifLocation{loc}
		run.Results = append(run.Results, r)
	}
	seen := map[string]bool{}
	for _, v := range res.Vulns {
		if !seen[v.ID] {
			seen[v.ID] = true
			d.Rules = append(d.Rules, sarifRule{ID: v.ID, ShortDescription: sarifText{ruleTitle(v)}, HelpURI: v.PrimaryURL,
				Properties: map[string]any{"security-severity": securitySeverity(v.Severity), "tags": []string{"vulnerability", "security", v.Severity}}})
		}
		r := sarifResult{RuleID: v.ID, Level: sarifLevel(v.Severity),
			Message: sarifText{fmt.Sprintf("Package: %s\nInstalled Version: %s\nVulnerability %s\nSeverity: %s\nFixed Version: %s\nImage: %s@%s",
				v.PkgName, v.Installed, v.ID, v.Severity, v.Fixed, res.Image, res.Digest)}}
		var loc sarifLocation
		loc.PhysicalLocation.ArtifactLocation.URI = res.Image
		r.Locations = []sarifLocation{loc}
		run.Results = append(run.Results, r)
	}
	sort.Slice(d.Rules, func(i, j int) bool { return d.Rules[i].ID < d.Rules[j].ID })
	if d.Rules == nil {
		d.Rules = []sarifRule{}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(sarifLog{Schema: "https://json.schemastore.org/sarif-2.1.0.json", Version: "2.1.0", Runs: []sarifRun{run}})
}

func ruleTitle(v gate.Vuln) string {
	if v.Title != "" {
		return v.Title
	}
	return v.ID + " in " + v.PkgName
}

// securitySeverity is the CVSS-like score GitHub code scanning ranks by.
func securitySeverity(severity string) string {
	switch severity {
	case "CRITICAL":
		return "9.5"
	case "HIGH":
		return "8.0"
	case "MEDIUM":
		return "5.5"
	case "LOW":
		return "2.0"
	}
	return "0.0"
}
