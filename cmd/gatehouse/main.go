// Command gatehouse is a pull-through caching proxy for OCI and Docker
// registries with a security gate.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	xos "github.com/aquasecurity/trivy/pkg/x/os"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	// Trivy makes a temporary directory per process; remove it.
	_ = xos.Cleanup()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	err := dispatch(ctx, commands(), args, &output{stdout: stdout, stderr: stderr})
	var ue *usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errDenied):
		return checkDenied
	case errors.As(err, &ue):
		if ue.msg != "" {
			fmt.Fprintf(stderr, "%s: %s\nRun '%s --help' for usage.\n", ue.cmd, ue.msg, ue.cmd)
		}
		return checkError
	default:
		fmt.Fprintf(stderr, "gatehouse: %v\n", err)
		if len(args) > 0 && (args[0] == "check" || args[0] == "policy") {
			return checkError
		}
		return 1
	}
}
