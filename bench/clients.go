package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// The blob scenarios (1 and 3) GET the blob with three clients, each run
// as a process of its own for every GET, so that the CPU time the client
// spends (user + system, from the child's rusage) is measured beside the
// time: a server that makes its clients work harder is slower for them.
//
//   - bench: this program's own client (client.go: 256 KiB socket reads,
//     1 MiB copies), run as a child of this program;
//   - curl: `curl -s -o /dev/null`, as a user tries a registry by hand;
//   - ggcr: go-containerregistry's remote.Layer(...).Compressed(), drained
//     (what crane, and many Go clients, do: it also checks the digest),
//     run as a child of this program too.
const (
	cBench = "bench"
	cCurl  = "curl"
	cGGCR  = "ggcr"
)

// onlyBlobs is -only's value that runs the blob and manifest scenarios
// (1 to 3) alone.
const onlyBlobs = "blobs"

// clientFlag, as the first argument, makes this program a client: it GETs
// one blob and exits (see clientMain).
const clientFlag = "-as-client"

// clientLabels describe the clients in the report.
var clientLabels = map[string]string{
	cBench: "the bench's own client (Go net/http, 256 KiB reads)",
	cCurl:  "`curl -s -o /dev/null`",
	cGGCR:  "go-containerregistry: `remote.Layer(...).Compressed()` drained, digest checked",
}

// clientFigures are one client's figures of the blob scenarios, per target.
type clientFigures struct {
	Warm, WarmCPU map[string][]time.Duration // GET time, client CPU time
	Cold, ColdCPU map[string][]time.Duration // GET time, client CPU time
	ColdSrv       map[string][]time.Duration // CPU time of the server process during the cold GET
}

func newClientFigures() *clientFigures {
	return &clientFigures{Warm: map[string][]time.Duration{}, WarmCPU: map[string][]time.Duration{},
		Cold: map[string][]time.Duration{}, ColdCPU: map[string][]time.Duration{}, ColdSrv: map[string][]time.Duration{}}
}

// clientRun is one GET by a client process.
type clientRun struct {
	wall, cpu time.Duration // whole process: start to exit; user + system
}

// runClient GETs url (a /v2/<repo>/blobs/<digest> URL) with client c in a
// process of its own and checks that it got all size bytes.
func (b *bench) runClient(ctx context.Context, c, url string) (clientRun, error) {
	var cmd *exec.Cmd
	size := strconv.FormatInt(b.img.layer.Size, 10)
	switch c {
	case cCurl:
		cmd = exec.CommandContext(ctx, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", url)
	default:
		self, err := os.Executable()
		if err != nil {
			return clientRun{}, err
		}
		cmd = exec.CommandContext(ctx, self, clientFlag, c, url, size, b.verifyDigest())
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	run := clientRun{wall: time.Since(start)}
	if err != nil {
		return run, fmt.Errorf("%s GET %s: %v: %s", c, url, err, strings.TrimSpace(errb.String()))
	}
	run.cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	if c == cCurl {
		if got := strings.TrimSpace(out.String()); got != "200 "+size {
			return run, fmt.Errorf("curl GET %s: status and size %q, want \"200 %s\"", url, got, size)
		}
	}
	return run, nil
}

// clientMain is this program as a client process: args are the client
// (bench or ggcr), the blob URL, its size and the digest to check ("" for
// none; ggcr always checks it).
func clientMain(args []string) int {
	if len(args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: bench", clientFlag, "bench|ggcr URL SIZE DIGEST")
		return 2
	}
	size, err := strconv.ParseInt(args[2], 10, 64)
	if err == nil {
		switch args[0] {
		case cBench:
			_, err = fetch(context.Background(), newBlobClient(), args[1], size, args[3])
		case cGGCR:
			err = ggcrGet(args[1], size)
		default:
			err = fmt.Errorf("unknown client %q", args[0])
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// ggcrGet reads the blob at url (http://HOST/v2/REPO/blobs/DIGEST) as a
// go-containerregistry client does: ping, then the layer's body, which
// Compressed checks against the digest and size.
func ggcrGet(url string, size int64) error {
	rest, ok := strings.CutPrefix(url, "http://")
	host, path, ok2 := strings.Cut(rest, "/v2/")
	repo, dgst, ok3 := strings.Cut(path, "/blobs/")
	if !ok || !ok2 || !ok3 {
		return fmt.Errorf("ggcr: not a blob URL: %s", url)
	}
	ref, err := name.NewDigest(host+"/"+repo+"@"+dgst, name.Insecure)
	if err != nil {
		return err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DisableCompression = true
	l, err := remote.Layer(ref, remote.WithTransport(tr))
	if err != nil {
		return err
	}
	rc, err := l.Compressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	n, err := io.Copy(io.Discard, rc)
	if err != nil {
		return err
	}
	if n != size {
		return fmt.Errorf("ggcr: body is %d bytes, want %d", n, size)
	}
	return nil
}

// rotate returns xs starting at element k (mod len(xs)): the order of
// round k, so that no target or client always goes first.
func rotate[T any](xs []T, k int) []T {
	if len(xs) == 0 {
		return nil
	}
	k %= len(xs)
	return append(append([]T(nil), xs[k:]...), xs[:k]...)
}
