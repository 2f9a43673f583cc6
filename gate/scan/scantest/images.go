package scantest

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"maps"
	"runtime"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Files are the files of a layer: path (no leading slash) → content. A
// path ending in "/" is a directory; an entry whose content starts with
// "#!" or whose path is under bin/ or sbin/ is executable.
type Files map[string][]byte

// Layer returns a deterministic gzip-compressed layer holding files, in
// path order, owned by root, with a fixed modification time.
func Layer(files Files) v1.Layer {
	b := layerTar(files)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	})
	if err != nil {
		panic(err)
	}
	return l
}

var epoch = time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC)

func layerTar(files Files) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	for _, name := range slices.Sorted(maps.Keys(files)) {
		// Parent directories first, as image builders write them.
		parts := strings.Split(strings.TrimSuffix(name, "/"), "/")
		for i := 1; i < len(parts); i++ {
			d := strings.Join(parts[:i], "/") + "/"
			if dirs[d] {
				continue
			}
			dirs[d] = true
			must(tw.WriteHeader(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX}))
		}
		if strings.HasSuffix(name, "/") {
			if !dirs[name] {
				dirs[name] = true
				must(tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX}))
			}
			continue
		}
		content := files[name]
		mode := int64(0o644)
		if bytes.HasPrefix(content, []byte("#!")) || bytes.HasPrefix(content, []byte("\x7fELF")) ||
			strings.HasPrefix(name, "bin/") || strings.HasPrefix(name, "sbin/") || strings.Contains(name, "/bin/") {
			mode = 0o755
		}
		must(tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: mode, Size: int64(len(content)), ModTime: epoch, Format: tar.FormatPAX}))
		_, err := tw.Write(content)
		must(err)
	}
	must(tw.Close())
	return buf.Bytes()
}

func must(err error) {
	if err != nil {
		panic(err)
	}
}

// Image returns an image of the given layers (bottom first) for the
// platform this runs on, with a deterministic config: same layers, same
// digest. createdBy, when given, is the history line of each layer.
func Image(layers []v1.Layer, createdBy ...string) v1.Image {
	return Append(empty.Image, layers, createdBy...)
}

// Append returns base with layers added on top.
func Append(base v1.Image, layers []v1.Layer, createdBy ...string) v1.Image {
	adds := make([]mutate.Addendum, len(layers))
	for i, l := range layers {
		h := v1.History{Created: v1.Time{Time: epoch}, CreatedBy: "COPY files /"}
		if i < len(createdBy) {
			h.CreatedBy = createdBy[i]
		}
		adds[i] = mutate.Addendum{Layer: l, History: h}
	}
	img, err := mutate.Append(base, adds...)
	must(err)
	cf, err := img.ConfigFile()
	must(err)
	cf = cf.DeepCopy()
	cf.Architecture = runtime.GOARCH
	cf.OS = "linux"
	cf.Created = v1.Time{Time: epoch}
	if cf.Config.Cmd == nil {
		cf.Config.Cmd = []string{"/bin/sh"}
	}
	img, err = mutate.ConfigFile(img, cf)
	must(err)
	return img
}

// OnBase returns base with one layer of files added.
func OnBase(base v1.Image, files Files) v1.Image {
	return Append(base, []v1.Layer{Layer(files)})
}

// apkDB renders lib/apk/db/installed entries: name, version, origin.
func apkDB(pkgs ...[3]string) []byte {
	var b strings.Builder
	for _, p := range pkgs {
		b.WriteString("C:Q1" + strings.Repeat("A", 27) + "=\n")
		b.WriteString("P:" + p[0] + "\nV:" + p[1] + "\nA:x86_64\nS:100000\nI:200000\n")
		b.WriteString("T:" + p[0] + " package\nU:https://example.com/" + p[0] + "\nL:MIT\n")
		b.WriteString("o:" + p[2] + "\nm:Fixture <fixture@example.com>\nt:4070908800\n")
		b.WriteString("F:usr/lib\nR:lib" + p[0] + ".so\n\n")
	}
	return []byte(b.String())
}

func alpineFiles(pkgs ...[3]string) Files {
	return Files{
		"etc/alpine-release": []byte("3.22.1\n"),
		"etc/os-release": []byte(`NAME="Alpine Linux"
ID=alpine
VERSION_ID=3.22.1
PRETTY_NAME="Alpine Linux v3.22"
HOME_URL="https://alpinelinux.org/"
`),
		"etc/apk/repositories": []byte("https://dl-cdn.alpinelinux.org/alpine/v3.22/main\nhttps://dl-cdn.alpinelinux.org/alpine/v3.22/community\n"),
		"lib/apk/db/installed": apkDB(pkgs...),
		"bin/busybox":          []byte("#!fixture busybox\n"),
	}
}

// CleanAlpine is an Alpine 3.22.1 image whose packages (musl 1.2.5-r10,
// busybox 1.37.0-r19, zlib 1.3.1-r2) have no vulnerability in V1; V2's
// CVEAlpineMusl hits its musl. One layer.
func CleanAlpine() v1.Image {
	return Image([]v1.Layer{CleanAlpineLayer()}, "ADD alpine-minirootfs-3.22.1-x86_64.tar.gz /")
}

// CleanAlpineLayer is the only layer of CleanAlpine: the shared base layer
// of NodeApp, JarApp and GoApp.
func CleanAlpineLayer() v1.Layer {
	return Layer(alpineFiles(
		[3]string{"musl", "1.2.5-r10", "musl"},
		[3]string{"busybox", "1.37.0-r19", "busybox"},
		[3]string{"zlib", "1.3.1-r2", "zlib"},
	))
}

// VulnerableAlpine is an Alpine 3.22.1 image with libcrypto3 and libssl3
// 3.5.0-r0 (origin openssl: CVEAlpineOpenSSL, CRITICAL, fixed in 3.5.1-r0)
// and busybox 1.37.0-r18 (CVEAlpineBusybox, MEDIUM, fixed in 1.37.0-r19),
// plus musl 1.2.5-r10 (V2's CVEAlpineMusl).
func VulnerableAlpine() v1.Image {
	return Image([]v1.Layer{Layer(alpineFiles(
		[3]string{"musl", "1.2.5-r10", "musl"},
		[3]string{"busybox", "1.37.0-r18", "busybox"},
		[3]string{"libcrypto3", "3.5.0-r0", "openssl"},
		[3]string{"libssl3", "3.5.0-r0", "openssl"},
		[3]string{"zlib", "1.3.1-r2", "zlib"},
	))}, "ADD alpine-minirootfs-3.22.1-x86_64.tar.gz /")
}

// dpkgStatus renders var/lib/dpkg/status entries: package, version, source
// ("" for none).
func dpkgStatus(pkgs ...[3]string) []byte {
	var b strings.Builder
	for _, p := range pkgs {
		b.WriteString("Package: " + p[0] + "\nStatus: install ok installed\nPriority: required\nSection: libs\n")
		b.WriteString("Installed-Size: 1000\nMaintainer: Fixture <fixture@example.com>\nArchitecture: amd64\n")
		if p[2] != "" {
			b.WriteString("Source: " + p[2] + "\n")
		}
		b.WriteString("Version: " + p[1] + "\nDescription: " + p[0] + " fixture\n\n")
	}
	return []byte(b.String())
}

// VulnerableDebian is a Debian 12 (bookworm) image with libssl3
// 3.0.15-1~deb12u1 (source openssl: CVEDebianOpenSSL, HIGH, fixed in
// 3.0.16-1~deb12u1), libc6 2.36-9+deb12u10 (source glibc: CVEDebianGlibc,
// MEDIUM, no fix: status affected), tar 1.34+dfsg-1.2+deb12u1
// (CVEDebianTar, LOW, will_not_fix) and base-files 12.4+deb12u11 (clean).
func VulnerableDebian() v1.Image {
	return Image([]v1.Layer{Layer(Files{
		"etc/debian_version": []byte("12.11\n"),
		"etc/os-release": []byte(`PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
`),
		"var/lib/dpkg/status": dpkgStatus(
			[3]string{"base-files", "12.4+deb12u11", ""},
			[3]string{"libc6", "2.36-9+deb12u10", "glibc"},
			[3]string{"libssl3", "3.0.15-1~deb12u1", "openssl"},
			[3]string{"tar", "1.34+dfsg-1.2+deb12u1", ""},
		),
		"bin/tar": []byte("#!fixture tar\n"),
	})}, "ADD rootfs.tar.xz /")
}

// PackageLock is the package-lock.json of NodeApp: lodash 4.17.20
// (CVENpmLodash, HIGH, fixed in 4.17.21), minimist 1.2.8 (CVENpmMinimist,
// CRITICAL, no fix), ms 2.1.3 (clean), and jest 29.7.0 as a dev dependency
// (not scanned).
const PackageLock = `{
  "name": "fixture-app",
  "version": "1.0.0",
  "lockfileVersion": 3,
  "requires": true,
  "packages": {
    "": {
      "name": "fixture-app",
      "version": "1.0.0",
      "dependencies": {
        "lodash": "^4.17.20",
        "minimist": "^1.2.8",
        "ms": "^2.1.3"
      },
      "devDependencies": {
        "jest": "^29.7.0"
      }
    },
    "node_modules/jest": {
      "version": "29.7.0",
      "resolved": "https://registry.npmjs.org/jest/-/jest-29.7.0.tgz",
      "dev": true
    },
    "node_modules/lodash": {
      "version": "4.17.20",
      "resolved": "https://registry.npmjs.org/lodash/-/lodash-4.17.20.tgz"
    },
    "node_modules/minimist": {
      "version": "1.2.8",
      "resolved": "https://registry.npmjs.org/minimist/-/minimist-1.2.8.tgz"
    },
    "node_modules/ms": {
      "version": "2.1.3",
      "resolved": "https://registry.npmjs.org/ms/-/ms-2.1.3.tgz"
    }
  }
}
`

// NodeApp is CleanAlpine plus a layer with app/package-lock.json
// (PackageLock) and app/package.json: two layers, the first shared with
// CleanAlpine.
func NodeApp() v1.Image {
	return OnBase(CleanAlpine(), Files{
		"app/package.json":      []byte(`{"name":"fixture-app","version":"1.0.0","dependencies":{"lodash":"^4.17.20","minimist":"^1.2.8","ms":"^2.1.3"},"devDependencies":{"jest":"^29.7.0"}}` + "\n"),
		"app/package-lock.json": []byte(PackageLock),
	})
}

// JarApp is CleanAlpine plus a layer with app/app.jar, a jar of a
// made-up library: scanning it must not fail when the JAR analyser is off
// (no Java DB).
func JarApp() v1.Image {
	return OnBase(CleanAlpine(), Files{"app/app.jar": jar()})
}

func jar() []byte {
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	add := func(name, content string) {
		w, err := zw.CreateHeader(&zip.FileHeader{Name: name, Method: zip.Deflate, Modified: epoch})
		must(err)
		_, err = io.WriteString(w, content)
		must(err)
	}
	add("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\r\nImplementation-Title: fixture\r\nImplementation-Version: 1.0.0\r\nImplementation-Vendor-Id: com.example\r\n\r\n")
	add("META-INF/maven/com.example/fixture/pom.properties", "groupId=com.example\nartifactId=fixture\nversion=1.0.0\n")
	add("com/example/Fixture.class", "\xca\xfe\xba\xbe fixture")
	must(zw.Close())
	return buf.Bytes()
}

// GzipLayer returns a gzip-compressed layer whose uncompressed stream write
// produces through tw (the tar) or w (raw bytes, e.g. after the tar's end).
func GzipLayer(write func(w io.Writer, tw *tar.Writer) error) v1.Layer {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	must(write(zw, tar.NewWriter(zw)))
	must(zw.Close())
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	must(err)
	return l
}

// Zeros returns a decompression bomb: a layer holding one file of size zero
// bytes, about a thousandth of that compressed.
func Zeros(size int64) v1.Layer {
	return GzipLayer(func(_ io.Writer, tw *tar.Writer) error {
		if err := tw.WriteHeader(&tar.Header{Name: "zeros", Typeflag: tar.TypeReg, Mode: 0o644, Size: size, ModTime: epoch}); err != nil {
			return err
		}
		if _, err := io.CopyN(tw, zeroReader{}, size); err != nil {
			return err
		}
		return tw.Close()
	})
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// ManyFiles returns a layer of n empty files.
func ManyFiles(n int) v1.Layer {
	return GzipLayer(func(_ io.Writer, tw *tar.Writer) error {
		for i := range n {
			if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("f/%d", i), Typeflag: tar.TypeReg, Mode: 0o644, ModTime: epoch}); err != nil {
				return err
			}
		}
		return tw.Close()
	})
}
