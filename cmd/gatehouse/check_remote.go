package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/gatehouse/gatehouse/gate"
	"github.com/gatehouse/gatehouse/gate/records"
)

// remoteOptions are check's flags for asking a running gatehouse.
type remoteOptions struct {
	server    string
	username  string
	tokenFile string
	caFile    string
	insecure  bool
	wait      time.Duration
}

func (o *remoteOptions) register(fs *flag.FlagSet) {
	fs.StringVar(&o.server, "server", "", "ask the running gatehouse at `URL` (its policy and DB judge) instead of judging here")
	fs.StringVar(&o.username, "username", "", "with --server: user `NAME` for its access control; the password is read from $GATEHOUSE_PASSWORD")
	fs.StringVar(&o.tokenFile, "token-file", "", "with --server: `FILE` holding a bearer token (pull or API token)")
	fs.StringVar(&o.caFile, "ca-file", "", "with --server: PEM `FILE` of the CA that signed its certificate")
	fs.BoolVar(&o.insecure, "insecure", false, "with --server: do not verify its certificate")
	fs.DurationVar(&o.wait, "wait", 5*time.Minute, "with --server: wait up to `DURATION` for a verdict while it scans (503 + Retry-After)")
}

// manifestAccept is what the check asks for: what containerd asks for.
var manifestAccept = strings.Join([]string{string(types.OCIImageIndex), string(types.DockerManifestList),
	string(types.OCIManifestSchema1), string(types.DockerManifestSchema2)}, ", ")

// remote is a client of a running gatehouse.
type remote struct {
	base *url.URL
	hc   *http.Client
	auth func(*http.Request)
}

// checkRemote pulls the image's manifest through a running gatehouse's
// registry API, as a node would, and reads the verdict and findings from
// its JSON API.
func checkRemote(ctx context.Context, o *checkOptions, stderr io.Writer) (*checkResult, error) {
	rc, err := newRemote(&o.remote)
	if err != nil {
		return nil, err
	}
	host, repo, ref, err := splitImage(o.image)
	if err != nil {
		return nil, err
	}
	res := &checkResult{Image: o.image, Vulns: []gate.Vuln{}}
	body, mt, dgst, denied, err := rc.manifest(ctx, host, repo, ref, o.remote.wait, stderr)
	if err == nil && denied == "" && types.MediaType(mt).IsIndex() {
		found, perr := pickPlatform(body, dgst, o.platform)
		if perr != nil {
			return nil, perr
		}
		res.Platform = found.Platform.String()
		_, _, dgst, denied, err = rc.manifest(ctx, host, repo, found.Digest.String(), o.remote.wait, stderr)
	}
	if err != nil {
		return nil, err
	}
	res.Digest = dgst
	res.Verdict = &gate.Verdict{Digest: dgst, Admitted: denied == "", Message: denied}
	if denied == "" {
		res.Verdict.Message = "admitted by " + o.remote.server
	}
	if dgst == "" {
		return res, nil // refused before a manifest was known (e.g. not an upstream)
	}
	d, err := rc.image(ctx, dgst)
	if err != nil {
		fmt.Fprintf(stderr, "gatehouse check: findings unavailable: %v\n", err)
		return res, nil
	}
	if d.Latest != nil && d.Latest.Admitted == res.Verdict.Admitted {
		res.Verdict = d.Latest
	}
	if d.Vulns != nil {
		res.Vulns = d.Vulns
	}
	return res, nil
}

func newRemote(o *remoteOptions) (*remote, error) {
	u, err := url.Parse(o.server)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%w: --server %q is not an http(s) URL such as https://gatehouse.internal:5000", errUsage, o.server)
	}
	tc := &tls.Config{InsecureSkipVerify: o.insecure} //nolint:gosec // opt-in
	if o.caFile != "" {
		pem, err := os.ReadFile(o.caFile)
		if err != nil {
			return nil, fmt.Errorf("--ca-file: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--ca-file %s: no PEM certificate", o.caFile)
		}
	}
	rc := &remote{base: u, hc: &http.Client{Timeout: time.Minute, Transport: &http.Transport{TLSClientConfig: tc, Proxy: http.ProxyFromEnvironment}},
		auth: func(*http.Request) {}}
	switch {
	case o.tokenFile != "":
		b, err := os.ReadFile(o.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("--token-file: %w", err)
		}
		token := strings.TrimSpace(string(b))
		rc.auth = func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+token) }
	case o.username != "":
		password := os.Getenv("GATEHOUSE_PASSWORD")
		rc.auth = func(r *http.Request) { r.SetBasicAuth(o.username, password) }
	}
	return rc, nil
}

// manifest GETs a manifest, waiting while the gatehouse answers 503 with a
// Retry-After (scanning). denied is the message of a 403 DENIED.
func (rc *remote) manifest(ctx context.Context, host, repo, ref string, wait time.Duration, stderr io.Writer) (body []byte, mediaType, dgst, denied string, err error) {
	u := rc.base.JoinPath("v2", host, repo, "manifests", ref)
	deadline := time.Now().Add(wait)
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
		if err != nil {
			return nil, "", "", "", err
		}
		req.Header.Set("Accept", manifestAccept)
		req.Header.Set("User-Agent", "gatehouse-check/"+version)
		rc.auth(req)
		resp, err := rc.hc.Do(req)
		if err != nil {
			return nil, "", "", "", err
		}
		body, err = io.ReadAll(io.LimitReader(resp.Body, 8<<20))
		resp.Body.Close()
		if err != nil {
			return nil, "", "", "", err
		}
		switch {
		case resp.StatusCode == http.StatusOK:
			return body, resp.Header.Get("Content-Type"), resp.Header.Get("Docker-Content-Digest"), "", nil
		case resp.StatusCode == http.StatusForbidden && ociErrorCode(body) == "DENIED":
			return nil, "", digestFromDenial(body), ociErrorMessage(body, resp.Status), nil
		case resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") != "":
			after, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
			pause := min(max(time.Duration(after)*time.Second, time.Second), time.Until(deadline))
			if pause <= 0 {
				return nil, "", "", "", fmt.Errorf("%s: no verdict within --wait %s: %s", u, wait, ociErrorMessage(body, resp.Status))
			}
			fmt.Fprintf(stderr, "gatehouse check: %s; asking again in %s\n", ociErrorMessage(body, resp.Status), pause.Round(time.Second))
			select {
			case <-ctx.Done():
				return nil, "", "", "", ctx.Err()
			case <-time.After(pause):
			}
		default:
			return nil, "", "", "", fmt.Errorf("%s: %s", u, ociErrorMessage(body, resp.Status))
		}
	}
}

// image reads GET /api/v1/images/<digest>.
func (rc *remote) image(ctx context.Context, dgst string) (*records.ImageDetail, error) {
	u := rc.base.JoinPath("api", "v1", "images", dgst)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	var d records.ImageDetail
	if err := rc.apiJSON(req, &d); err != nil {
		return nil, err
	}
	return &d, nil
}

// ociError is the registry API's error body, and the JSON API's.
type ociError struct {
	Errors []struct {
		Code    string          `json:"code"`
		Message string          `json:"message"`
		Detail  json.RawMessage `json:"detail"`
	} `json:"errors"`
	Error string `json:"error"`
}

func parseOCIError(body []byte) *ociError {
	var e ociError
	if json.Unmarshal(body, &e) != nil {
		return nil
	}
	return &e
}

func ociErrorCode(body []byte) string {
	if e := parseOCIError(body); e != nil && len(e.Errors) > 0 {
		return e.Errors[0].Code
	}
	return ""
}

// ociErrorMessage is the first error's code and message, else status.
func ociErrorMessage(body []byte, status string) string {
	e := parseOCIError(body)
	switch {
	case e != nil && len(e.Errors) > 0:
		return e.Errors[0].Code + ": " + e.Errors[0].Message
	case e != nil && e.Error != "":
		return status + ": " + e.Error
	}
	return status
}

// digestFromDenial reads the denied manifest's digest from the DENIED
// error's detail, when it carries one.
func digestFromDenial(body []byte) string {
	e := parseOCIError(body)
	if e == nil || len(e.Errors) == 0 {
		return ""
	}
	var d struct {
		Digest string `json:"digest"`
	}
	if json.Unmarshal(e.Errors[0].Detail, &d) != nil {
		return ""
	}
	return d.Digest
}

// splitImage splits an image reference as docker does: a first component
// with a dot or colon (or localhost) is the registry, else docker.io; a
// docker.io name without a slash is in library/.
func splitImage(s string) (host, repo, ref string, err error) {
	name, ref := splitRef(s)
	first, rest, ok := strings.Cut(name, "/")
	if ok && (strings.ContainsAny(first, ".:") || first == "localhost") {
		host, repo = first, rest
	} else {
		host, repo = "docker.io", name
	}
	if host == "docker.io" && !strings.Contains(repo, "/") {
		repo = "library/" + repo
	}
	if repo == "" || ref == "" {
		return "", "", "", fmt.Errorf("%w: %q is not an image reference", errUsage, s)
	}
	return host, repo, ref, nil
}

// splitRef splits name[:tag][@digest] into the name and the tag or digest
// (the digest when both are given; "latest" when neither is).
func splitRef(s string) (name, ref string) {
	name, ref = s, "latest"
	digest := ""
	if i := strings.LastIndex(name, "@"); i >= 0 {
		name, digest = name[:i], name[i+1:]
	}
	if i := strings.LastIndexByte(name, ':'); i > strings.LastIndexByte(name, '/') {
		name, ref = name[:i], name[i+1:]
	}
	if digest != "" {
		ref = digest
	}
	return name, ref
}
