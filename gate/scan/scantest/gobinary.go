package scantest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

var goBinary struct {
	once sync.Once
	b    []byte
	err  error
}

// GoBinary returns a small Go program (module example.com/fixture, no
// dependencies) compiled with the go command on PATH, once per process. Its
// build info names the Go release, which Trivy reports as package "stdlib"
// (CVEGoStdlib affects every release). t is skipped when there is no go
// command.
func GoBinary(t testing.TB) []byte {
	t.Helper()
	goBinary.once.Do(func() { goBinary.b, goBinary.err = buildGoBinary() })
	if goBinary.err != nil {
		if _, err := exec.LookPath("go"); err != nil {
			t.Skip("no go command to build the Go binary fixture")
		}
		t.Fatal(goBinary.err)
	}
	return goBinary.b
}

func buildGoBinary() ([]byte, error) {
	dir, err := os.MkdirTemp("", "scantest-gobin-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	files := map[string]string{
		"go.mod":  "module example.com/fixture\n\ngo 1.22\n",
		"main.go": "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"fixture\") }\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return nil, err
		}
	}
	cmd := exec.Command("go", "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w", "-o", "app", ".")
	cmd.Dir = dir
	// No network, no workspace, no toolchain switch: build with what is here.
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOPROXY=off", "GOWORK=off", "GOTOOLCHAIN=local", "GOFLAGS=-mod=mod")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build Go binary fixture: %v\n%s", err, out)
	}
	return os.ReadFile(filepath.Join(dir, "app"))
}

// GoApp is CleanAlpine plus a layer with usr/local/bin/app, the GoBinary.
func GoApp(t testing.TB) v1.Image {
	t.Helper()
	return OnBase(CleanAlpine(), Files{"usr/local/bin/app": GoBinary(t)})
}
