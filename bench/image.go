package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// OCI media types of the test image (OCI image spec v1.1).
const (
	mediaTypeManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaTypeConfig   = "application/vnd.oci.image.config.v1+json"
	mediaTypeLayer    = "application/vnd.oci.image.layer.v1.tar"

	// acceptManifests is what containerd sends when it resolves a reference.
	acceptManifests = "application/vnd.oci.image.index.v1+json, " +
		"application/vnd.oci.image.manifest.v1+json, " +
		"application/vnd.docker.distribution.manifest.list.v2+json, " +
		"application/vnd.docker.distribution.manifest.v2+json, */*"
)

// descriptor is an OCI content descriptor.
type descriptor struct {
	MediaType string `json:"mediaType"`
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
}

// testImage is the image the upstream holds: one big layer.
type testImage struct {
	repo      string // repository name, e.g. bench/big
	tag       string
	layer     descriptor
	layerPath string // the layer on disk (nginx serves it too)
	config    []byte
	manifest  []byte
	digest    string // manifest digest
}

// writeLayer writes an uncompressed tar archive of exactly size bytes (a
// multiple of 512, at least 2048) to path: one regular file of random
// bytes. A valid tar keeps a scanning proxy from refusing the image for a
// corrupt layer; random content keeps any compression on the way from
// flattering a result. The file is streamed, never held in memory.
func writeLayer(path string, size int64) (descriptor, error) {
	f, err := os.Create(path)
	if err != nil {
		return descriptor{}, err
	}
	defer f.Close()
	h := sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(f, h), 1<<20)
	tw := tar.NewWriter(bw)
	// Header block + content (a multiple of 512: no padding) + two zero
	// blocks that end the archive.
	content := size - 512 - 1024
	hdr := &tar.Header{
		Typeflag: tar.TypeReg,
		Name:     "bench/random.bin",
		Mode:     0o644,
		Size:     content,
		ModTime:  time.Unix(0, 0),
		Format:   tar.FormatUSTAR, // one 512-byte header: sizes below 8 GiB
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return descriptor{}, err
	}
	var seed [32]byte
	_, _ = rand.Read(seed[:])
	if _, err := io.CopyN(tw, mrand.NewChaCha8(seed), content); err != nil {
		return descriptor{}, err
	}
	if err := tw.Close(); err != nil {
		return descriptor{}, err
	}
	if err := bw.Flush(); err != nil {
		return descriptor{}, err
	}
	if err := f.Close(); err != nil {
		return descriptor{}, err
	}
	st, err := os.Stat(path)
	if err != nil {
		return descriptor{}, err
	}
	if st.Size() != size {
		return descriptor{}, fmt.Errorf("layer is %d bytes, want %d", st.Size(), size)
	}
	return descriptor{MediaType: mediaTypeLayer, Digest: "sha256:" + hex.EncodeToString(h.Sum(nil)), Size: size}, nil
}

// newTestImage builds the config and manifest around a layer on disk.
func newTestImage(repo, tag, layerPath string, layer descriptor) (*testImage, error) {
	config, err := json.Marshal(map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"config":       map[string]any{"Cmd": []string{"/bin/true"}},
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{layer.Digest}},
	})
	if err != nil {
		return nil, err
	}
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     mediaTypeManifest,
		"config":        descriptor{MediaType: mediaTypeConfig, Digest: digestOf(config), Size: int64(len(config))},
		"layers":        []descriptor{layer},
	})
	if err != nil {
		return nil, err
	}
	return &testImage{
		repo: repo, tag: tag, layer: layer, layerPath: layerPath,
		config: config, manifest: manifest, digest: digestOf(manifest),
	}, nil
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// blobPath, manifestPath: the distribution API paths of the image.
func (img *testImage) blobPath() string { return "/v2/" + img.repo + "/blobs/" + img.layer.Digest }
func (img *testImage) manifestPath(ref string) string {
	return "/v2/" + img.repo + "/manifests/" + ref
}

// push uploads the image to the registry at base: both blobs with a
// monolithic upload (POST, then PUT with the whole body streamed from the
// file), then the manifest under its tag.
func (img *testImage) push(ctx context.Context, base string) error {
	client := &http.Client{}
	cfg := descriptor{MediaType: mediaTypeConfig, Digest: digestOf(img.config), Size: int64(len(img.config))}
	if err := pushBlob(ctx, client, base, img.repo, cfg, func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(img.config)), nil
	}); err != nil {
		return fmt.Errorf("push config: %w", err)
	}
	if err := pushBlob(ctx, client, base, img.repo, img.layer, func() (io.ReadCloser, error) {
		return os.Open(img.layerPath)
	}); err != nil {
		return fmt.Errorf("push layer: %w", err)
	}
	got, err := putManifest(ctx, client, base+img.manifestPath(img.tag), img.manifest)
	if err != nil {
		return err
	}
	if got != "" && got != img.digest {
		return fmt.Errorf("push manifest: registry says digest %s, want %s", got, img.digest)
	}
	return nil
}

func pushBlob(ctx context.Context, client *http.Client, base, repo string, desc descriptor, open func() (io.ReadCloser, error)) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v2/"+repo+"/blobs/uploads/", nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	drain(resp)
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("start upload: %s", resp.Status)
	}
	loc, err := resp.Request.URL.Parse(resp.Header.Get("Location"))
	if err != nil {
		return fmt.Errorf("upload location: %w", err)
	}
	q := loc.Query()
	q.Set("digest", desc.Digest)
	loc.RawQuery = q.Encode()
	body, err := open()
	if err != nil {
		return err
	}
	defer body.Close()
	req, err = http.NewRequestWithContext(ctx, http.MethodPut, loc.String(), body)
	if err != nil {
		return err
	}
	req.ContentLength = desc.Size
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err = client.Do(req)
	if err != nil {
		return err
	}
	defer drain(resp)
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("upload %s: %s: %s", desc.Digest, resp.Status, snippet(resp.Body))
	}
	return nil
}

// drain reads what is left of a body (capped) and closes it, so that the
// connection can be reused.
// putManifest uploads a manifest to url (…/manifests/<tag>) and returns
// the Docker-Content-Digest the registry answered.
func putManifest(ctx context.Context, client *http.Client, url string, manifest []byte) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, url, bytes.NewReader(manifest))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", mediaTypeManifest)
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer drain(resp)
	if resp.StatusCode != http.StatusCreated {
		return "", fmt.Errorf("push manifest: %s: %s", resp.Status, snippet(resp.Body))
	}
	return resp.Header.Get("Docker-Content-Digest"), nil
}

func drain(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
}

// snippet returns the start of an error body for messages.
func snippet(r io.Reader) string {
	b, _ := io.ReadAll(io.LimitReader(r, 512))
	return strings.TrimSpace(string(b))
}

// hostPort returns the host:port of a base URL.
func hostPort(base string) string {
	u, err := url.Parse(base)
	if err != nil {
		return base
	}
	return u.Host
}
