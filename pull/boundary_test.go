package pull_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The content layer sits below the HTTP surface and the gate: it links
// neither (nor the scanners), so the data flows one way. A change that
// makes it import the proxy, the gate, the console or Trivy/cosign fails
// here.
func TestContentLayerImportsNothingAbove(t *testing.T) {
	for _, pkg := range []string{"github.com/gatehouse/gatehouse/pull", "github.com/gatehouse/gatehouse/pull/transport"} {
		out, err := exec.Command("go", "list", "-deps", pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list: %v\n%s", err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			for _, banned := range []string{"github.com/aquasecurity/", "github.com/sigstore/", "net/http/httptest",
				"github.com/gatehouse/gatehouse/proxy", "github.com/gatehouse/gatehouse/gate", "github.com/gatehouse/gatehouse/ui",
				"github.com/gatehouse/gatehouse/api"} {
				if dep == banned || strings.HasPrefix(dep, banned+"/") || strings.HasSuffix(banned, "/") && strings.HasPrefix(dep, banned) {
					t.Errorf("%s depends on %s", pkg, dep)
				}
			}
		}
	}
}

// The content layer is no HTTP server: no handler, response writer,
// server or mux appears in its code (net/http is there for the upstream
// client's requests and responses only).
func TestContentLayerServesNoHTTP(t *testing.T) {
	server := map[string]bool{"ResponseWriter": true, "Handler": true, "HandlerFunc": true, "Server": true,
		"ServeMux": true, "ServeContent": true, "ServeFile": true, "ErrAbortHandler": true, "NewResponseController": true,
		"ListenAndServe": true, "Serve": true}
	files, _ := filepath.Glob("*.go")
	more, _ := filepath.Glob("transport/*.go")
	for _, f := range append(files, more...) {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		file, err := parser.ParseFile(token.NewFileSet(), f, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(file, func(n ast.Node) bool {
			if sel, ok := n.(*ast.SelectorExpr); ok {
				if id, ok := sel.X.(*ast.Ident); ok && id.Name == "http" && server[sel.Sel.Name] {
					t.Errorf("%s uses http.%s", f, sel.Sel.Name)
				}
			}
			if fd, ok := n.(*ast.FuncDecl); ok && fd.Name.Name == "ServeHTTP" {
				t.Errorf("%s defines ServeHTTP", f)
			}
			return true
		})
	}
}
