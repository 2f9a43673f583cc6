package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse/gatehouse/gate/scan/scantest"
)

// TestExceptions is issue 17's acceptance for scoped exceptions, with the
// real registry and containerd: the same vulnerable image in two
// repositories; an exception scoped to one admits it there and not in the
// other (containerd shows the CVE). Then the exception file changes on
// disk and gatehouse, without a restart, applies it: withdrawn, the image
// is refused where it was admitted; moved to the other repository, it is
// admitted there.
//
// How one would slip past: pull the excepted image under another
// repository name (refused), or keep pulling it after the exception was
// withdrawn (refused once the file is reloaded: the stored verdicts are
// judged again, and a stored verdict is checked against the exceptions in
// force at every use).
func TestExceptions(t *testing.T) {
	requireGatehouse(t)
	reg := StartRegistry(t, RegistryOptions{})
	img := scantest.VulnerableAlpine()
	app := reg.Push(t, "e2e/exc-app", "v1", img)
	other := reg.Push(t, "e2e/exc-other", "v1", img)
	if app.Digest != other.Digest {
		t.Fatal("the two repositories hold different images")
	}
	cve := scantest.CVEAlpineOpenSSL
	file := filepath.Join(t.TempDir(), "exceptions.yaml")
	writeExceptions(t, file, reg.Host, cve, "e2e/exc-app")

	gh := StartGatehouse(t, GatehouseConfig{Upstreams: []GatehouseUpstream{reg.Upstream()},
		Gate:      &GateConfig{DB: GateDB{UpdateInterval: "0s"}, Policy: GatePolicy{Rules: []GateRule{{Name: "strict", Block: []string{"CRITICAL"}}}}},
		DBArchive: writeTestDB(t)})
	gh.Stop(t)
	setGateKey(t, gh, "exceptions", map[string]any{"path": file, "reloadInterval": "1s", "warnBefore": "168h"})
	gh.Start(t)

	ctrd := StartContainerd(t)
	ctrd.SetHosts(t, reg.Host, Hosts{Server: gh.URL})
	ctrd.MustPull(t, app.Ref(reg.Host), PullOptions{})
	v := imageVerdict(t, gh, app.Digest.String())
	if !v.Admitted || v.Repo != app.Repo || len(v.Decision.Excepted) == 0 || v.Decision.Excepted[0].ID != cve ||
		v.Decision.Excepted[0].Exception.Owner != "team-app" || v.Decision.Excepted[0].Exception.Source != file ||
		!strings.Contains(v.Message, "excepted: "+cve) || v.Decision.ValidUntil.IsZero() {
		t.Fatalf("verdict of the excepted image: %+v", v)
	}
	res := ctrd.Pull(t, other.Ref(reg.Host), PullOptions{})
	if res.Err == nil || !strings.Contains(res.Output(), cve) {
		t.Fatalf("pull from the repository the exception does not name: %v\n%s", res.Err, res.Output())
	}
	var list struct {
		Exceptions []struct {
			ID, Owner, State, Source string
			Scope                    struct{ Repositories []string }
		}
	}
	gh.API(t, "/api/v1/exceptions", &list)
	if len(list.Exceptions) != 1 || list.Exceptions[0].State != "active" || list.Exceptions[0].Owner != "team-app" ||
		list.Exceptions[0].Scope.Repositories[0] != "e2e/exc-app" {
		t.Fatalf("GET /api/v1/exceptions: %+v", list)
	}

	// Withdrawn (the exception now names an unrelated repository): the
	// image record (first judged in e2e/exc-app) is judged again.
	writeExceptions(t, file, reg.Host, cve, "e2e/unrelated")
	// The image record shows the latest verdict of any repository, and
	// both are judged again in either order: read the re-judging of
	// e2e/exc-app itself from the log.
	waitFor(t, time.Minute, "flip to denied of the verdict of e2e/exc-app", func() bool {
		for _, l := range strings.Split(gh.Log(), "\n") {
			if strings.Contains(l, "verdict changed") && strings.Contains(l, `"repo":"`+app.Repo+`"`) && strings.Contains(l, `"admitted":false`) {
				return true
			}
		}
		return false
	})
	if res := ctrd.Pull(t, app.Ref(reg.Host), PullOptions{}); res.Err == nil || !strings.Contains(res.Output(), cve) {
		t.Fatalf("pull after the exception was withdrawn: %v\n%s", res.Err, res.Output())
	}
	// Moved to the other repository: its stored denial gives way.
	writeExceptions(t, file, reg.Host, cve, "e2e/exc-other")
	waitFor(t, time.Minute, "exception naming e2e/exc-other", func() bool {
		gh.API(t, "/api/v1/exceptions", &list)
		return len(list.Exceptions) == 1 && list.Exceptions[0].Scope.Repositories[0] == "e2e/exc-other"
	})
	ctrd.MustPull(t, other.Ref(reg.Host), PullOptions{})
	if res := ctrd.Pull(t, app.Ref(reg.Host), PullOptions{}); res.Err == nil {
		t.Fatalf("pull from e2e/exc-app after the exception moved: %s", res.Output())
	}
}

// excVerdict is what the test reads of a verdict.
type excVerdict struct {
	Admitted bool   `json:"admitted"`
	Repo     string `json:"repository"`
	Message  string `json:"message"`
	Decision struct {
		ValidUntil time.Time `json:"validUntil"`
		Excepted   []struct {
			ID        string `json:"id"`
			Exception struct {
				Owner, Source string
			} `json:"exception"`
		} `json:"excepted"`
	} `json:"decision"`
}

func imageVerdict(t *testing.T, gh *Gatehouse, dgst string) excVerdict {
	t.Helper()
	var d struct {
		Verdict *excVerdict `json:"verdict"`
	}
	gh.API(t, "/api/v1/images/"+dgst, &d)
	if d.Verdict == nil {
		t.Fatalf("image %s has no verdict", dgst)
	}
	return *d.Verdict
}

// writeExceptions writes an exceptions file with one exception for cve in
// repo at upstream, expiring in a year. It writes a temporary file and
// renames it, as a git checkout or a ConfigMap update does.
func writeExceptions(t *testing.T, file, upstream, cve, repo string) {
	t.Helper()
	body := fmt.Sprintf(`# reviewed in git
exceptions:
  - id: %s
    upstreams: [%q]
    repositories: [%s]
    owner: team-app
    reason: the vulnerable code path is not reachable (e2e)
    expires: %s
`, cve, upstream, repo, time.Now().AddDate(1, 0, 0).Format(time.DateOnly))
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, file); err != nil {
		t.Fatal(err)
	}
}
