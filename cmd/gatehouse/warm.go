package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// warmOptions are the flags of gatehouse warm.
type warmOptions struct {
	config    string
	platforms []string
	remote    remoteOptions
}

func (o *warmOptions) register(fs *flag.FlagSet) {
	fs.StringVar(&o.config, "config", "", "YAML configuration `FILE` whose listen address is the default --server (default: $GATEHOUSE_CONFIG, else :5000)")
	fs.Func("platform", "`OS/ARCH` to judge and cache of a multi-platform index; repeat for more (default linux/amd64)", func(s string) error {
		if _, err := v1.ParsePlatform(s); err != nil || !strings.Contains(s, "/") {
			return fmt.Errorf("%q is not os/arch[/variant]", s)
		}
		o.platforms = append(o.platforms, s)
		return nil
	})
	fs.StringVar(&o.remote.server, "server", "", "the running gatehouse's `URL` (default: the configuration's listen address on localhost)")
	fs.StringVar(&o.remote.username, "username", "", "user `NAME` for its access control; the password is read from $GATEHOUSE_PASSWORD")
	fs.StringVar(&o.remote.tokenFile, "token-file", "", "`FILE` holding a bearer token (pull token)")
	fs.StringVar(&o.remote.caFile, "ca-file", "", "PEM `FILE` of the CA that signed its certificate")
	fs.BoolVar(&o.remote.insecure, "insecure", false, "do not verify its certificate")
	fs.DurationVar(&o.remote.wait, "wait", 10*time.Minute, "wait up to `DURATION` for each verdict while it scans (503 + Retry-After)")
}

func warmCmd() *command {
	var o warmOptions
	return &command{name: "warm", args: "IMAGE...", nargs: -1, summary: "Have a running gatehouse judge and cache images before they are pulled",
		long: `Pulls each IMAGE through a running gatehouse's registry API, as a node would:
the manifest (and of an index, the manifest of each --platform), so that
gatehouse judges it now, then every blob of an admitted image (read to its
end and its digest checked here), so that gatehouse caches it. The pull of
a rollout that follows finds the verdicts made and the layers local.
IMAGE is host/repository:tag or host/repository@digest, the host naming an
upstream of that gatehouse (docker.io when there is none, as docker does).

Progress: on a terminal one live line per image (bytes done of the total);
otherwise one line per manifest and per blob. A denied image prints the
reason gatehouse gave.

Exit status: 0 every image admitted and cached, 1 an image denied or a
failure (the error is printed), 2 a wrong command line.`,
		example: "gatehouse warm docker.io/library/nginx:1.29 ghcr.io/org/app:v2\n" +
			"gatehouse warm --server https://gatehouse.internal:5000 --platform linux/amd64 --platform linux/arm64 org/app:v2 && kubectl rollout restart deploy/app",
		flags: o.register,
		run: func(ctx context.Context, out *output, args []string) error {
			if len(args) == 0 {
				return fmt.Errorf("%w: warm needs at least one IMAGE", errUsage)
			}
			return warmImages(ctx, &o, args, out)
		}}
}

// warmImages warms each image in turn; it returns errDenied when one was
// denied, else the first failure, after trying every image.
func warmImages(ctx context.Context, o *warmOptions, images []string, out *output) error {
	if o.remote.server == "" {
		server, err := defaultServer(o.config)
		if err != nil {
			return err
		}
		o.remote.server = server
	}
	if len(o.platforms) == 0 {
		o.platforms = []string{"linux/amd64"}
	}
	type ref struct{ image, host, repo, ref string }
	var refs []ref
	for _, im := range images {
		host, repo, r, err := splitImage(im)
		if err != nil {
			return err
		}
		refs = append(refs, ref{im, host, repo, r})
	}
	rc, err := newRemote(&o.remote)
	if err != nil {
		return err
	}
	blobs := &http.Client{Transport: rc.hc.Transport} // no overall timeout: layers may be large
	denied, failed := 0, 0
	for _, r := range refs {
		p := newProgress(out.stdout, r.image)
		w := &warmer{rc: rc, blobs: blobs, o: o, p: p}
		switch err := w.image(ctx, r.host, r.repo, r.ref); {
		case err == errDenied:
			denied++
		case err != nil:
			p.fail(err)
			failed++
		default:
			p.finish()
		}
	}
	switch {
	case denied > 0:
		return errDenied
	case failed > 0:
		return fmt.Errorf("%d of %d images could not be warmed", failed, len(refs))
	}
	return nil
}

// defaultServer is the gatehouse of the configuration's listen address,
// on this machine.
func defaultServer(path string) (string, error) {
	cf := commonFlags{config: path}
	cfg, err := cf.load()
	if err != nil {
		return "", err
	}
	host, port, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return "", fmt.Errorf("listen %q: %w", cfg.Listen, err)
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "localhost"
	}
	scheme := "http"
	if cfg.Server.TLS.Enabled() {
		scheme = "https"
	}
	return scheme + "://" + net.JoinHostPort(host, port), nil
}

// warmer warms one image through a running gatehouse.
type warmer struct {
	rc    *remote
	blobs *http.Client
	o     *warmOptions
	p     *progress
}

// image warms host/repo:ref: errDenied when gatehouse denied it (the
// reason printed), nil when every manifest was admitted and every blob read.
func (w *warmer) image(ctx context.Context, host, repo, ref string) error {
	body, mt, dgst, err := w.manifest(ctx, host, repo, ref)
	if err != nil || body == nil {
		return err
	}
	if !types.MediaType(mt).IsIndex() {
		return w.blobsOf(ctx, host, repo, body, dgst)
	}
	w.p.event("index %s", dgst)
	for _, pl := range w.o.platforms {
		d, err := pickPlatform(body, dgst, pl)
		if err != nil {
			return err
		}
		pbody, _, pdgst, err := w.manifest(ctx, host, repo, d.Digest.String())
		if err != nil || pbody == nil {
			return err
		}
		w.p.event("%s: manifest %s", pl, pdgst)
		if err := w.blobsOf(ctx, host, repo, pbody, pdgst); err != nil {
			return err
		}
	}
	return nil
}

// manifest GETs a manifest, waiting while gatehouse scans; a nil body
// with a nil error is a denial, printed.
func (w *warmer) manifest(ctx context.Context, host, repo, ref string) ([]byte, string, string, error) {
	body, mt, dgst, denied, err := w.rc.manifest(ctx, host, repo, ref, w.o.remote.wait, w.p.waiting())
	if err != nil {
		return nil, "", "", err
	}
	if denied != "" {
		w.p.denied(denied)
		return nil, "", "", errDenied
	}
	return body, mt, dgst, nil
}

// blobsOf reads the config and layers of an admitted image manifest.
func (w *warmer) blobsOf(ctx context.Context, host, repo string, body []byte, dgst string) error {
	m, err := v1.ParseManifest(bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("manifest %s: %w", dgst, err)
	}
	descs := append([]v1.Descriptor{m.Config}, m.Layers...)
	for _, d := range descs {
		if d.MediaType.IsDistributable() {
			w.p.total += d.Size
		}
	}
	for _, d := range descs {
		if !d.MediaType.IsDistributable() {
			continue // foreign layers come from their URLs
		}
		if err := w.blob(ctx, host, repo, d); err != nil {
			return err
		}
	}
	return nil
}

// blob GETs one blob, hashing it: a blob whose digest or size is not the
// descriptor's is an error.
func (w *warmer) blob(ctx context.Context, host, repo string, d v1.Descriptor) error {
	u := w.rc.base.JoinPath("v2", host, repo, "blobs", d.Digest.String())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", "gatehouse-warm/"+version)
	w.rc.auth(req)
	resp, err := w.blobs.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return fmt.Errorf("blob %s: %s", d.Digest, ociErrorMessage(b, resp.Status))
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(h, w.p), io.LimitReader(resp.Body, d.Size+1))
	if err != nil {
		return fmt.Errorf("blob %s: %w", d.Digest, err)
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); n != d.Size || got != d.Digest.String() {
		return fmt.Errorf("blob %s: received %d bytes with digest %s, want %d bytes", d.Digest, n, got, d.Size)
	}
	w.p.event("blob %s %d bytes", d.Digest, n)
	return nil
}
