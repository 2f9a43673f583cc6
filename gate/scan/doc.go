// Package scan finds the known vulnerabilities of container images with
// Trivy (github.com/aquasecurity/trivy v0.74) embedded as a library.
//
// A Scanner reads an image's layers through any go-containerregistry
// v1.Image, finds its OS packages (apk, dpkg, rpm, ...) and language
// packages (Go and Rust binaries, lock files such as package-lock.json,
// requirements.txt, Gemfile.lock, Cargo.lock, installed Python, Node and Ruby
// packages, ...) and detects their vulnerabilities with the trivy-db
// vulnerability DB. Secret, misconfiguration and licence scanning are off,
// and so is everything that would reach the network (Rekor, Maven Central,
// apk indexes). The JAR analyser runs only when a Java DB is configured:
// without one Trivy fails on the first jar.
//
// # Fail closed
//
// Every analysis or detection error is returned; a Report is never the
// partial result of a failure. Two Trivy options fail open when left empty
// (ScanOptions.PkgRelationships drops every package, VulnSeveritySources
// turns every severity into UNKNOWN); they are built in one function,
// scanOptions, and pinned by TestFailOpenOptions.
//
// # Limits
//
// Options.MaxLayerSize and Options.MaxLayerFiles bound each layer a scan
// reads (gate.scanLimits). Trivy v0.74 reads a layer through
// LayerByDiffID(...).Uncompressed() and walks it with archive/tar; the
// Scanner wraps that stream: a goroutine reads the layer ahead of Trivy,
// counts its bytes and parses it with archive/tar, and hands bytes on to
// Trivy only once every tar header they complete has been checked. So the
// header of one entry too many, or of a file whose declared size (a sparse
// file's holes take no stream bytes) breaks the size limit, never reaches
// Trivy: its read fails instead. The error is a *gate.LimitError naming the
// limit and the layer. Trivy ignores the error of its last read of a layer
// (past the tar's end), so a breach is also recorded per layer: such a
// layer's analysis is never cached, and Scan returns the error. The
// read-ahead is bounded (a few 32 KiB chunks) and the goroutine ends when
// the stream is closed, or when the scan ends at the latest.
//
// The same goroutine hashes the layer: Trivy caches a layer's analysis
// under the diffID the image config declares, so a content that does not
// hash to that diffID fails the scan and is never cached (otherwise an image
// naming a popular base layer's diffID over other content would decide the
// analysis of that base for every image built on it).
//
// # Layer cache
//
// Layer analysis results are cached by diffID (and analyser versions) in
// Trivy's bbolt cache under Options.CacheDir, so an image on a known base
// analyses only its own layers, and concurrent scans sharing a layer that
// is not cached yet analyse it once (one scan claims it, the others wait).
// Report.LayersAnalysed and Stats tell how many layers were read. Entries
// (each layer's packages, with their installed files) never expire: remove
// the directory while no Scanner is open to reclaim the space; it is
// rebuilt on demand.
//
// # The vulnerability DB
//
// Options.DBDir holds trivy.db and metadata.json, the files of the trivy-db
// OCI artifact's layer (media type
// application/vnd.aquasec.trivy.db.layer.v1.tar+gzip); Import takes that
// layer's gzip stream. trivy-db keeps the open DB in a package-level handle,
// so there is at most one open Scanner per process (New fails otherwise).
// Detection holds a read lock on it; Import validates the new DB aside,
// then takes the write lock (waiting for detections in flight, while layer
// analysis goes on), closes the old DB, moves the new files in and opens
// them. Rescan detects again from a stored Inventory, without layers.
//
// # Concurrency
//
// A Scanner's methods are safe for concurrent use. Trivy keeps its
// analysers as process-global instances and re-initialises them for every
// scan; the Scanner serialises that step. One residue remains: the Python
// .egg analyser rewrites its logger field while another scan may be
// analysing a .egg file (same value; the race detector can report it).
//
// # Logging
//
// Importing Trivy's log package replaces slog.Default with a handler that
// buffers every record in memory until Trivy's CLI flushes it, which a
// library user never does. This package's init puts back a plain text
// handler on standard error when it finds that buffering handler (the
// original default handler cannot be recovered once replaced); programs set
// their own default logger in main, after all package initialisation, as
// usual. Nothing in this package replaces slog.Default afterwards. Trivy
// logs through slog.Default (e.g. "Detecting vulnerabilities..." at INFO per
// scan); TrivyLogLevel wraps a handler to drop those below a level.
// Options.Log receives only this package's own messages.
package scan
