package e2e

import (
	"testing"
)

// TestHarnessDirect checks the harness without gatehouse: containerd and
// skopeo pull straight from docker-registry and get the upstream's bytes.
// When this fails the machine or the harness is broken, not gatehouse.
func TestHarnessDirect(t *testing.T) {
	requireE2E(t)
	reg := StartRegistry(t, RegistryOptions{})
	img := reg.PushImage(t, "e2e/single", "v1", SmallImage(1))
	idx := reg.PushIndex(t, "e2e/multi", "v1", 2)

	t.Run("containerd", func(t *testing.T) {
		ctrd := StartContainerd(t)
		ctrd.SetHosts(t, reg.Host, Hosts{Server: reg.URL})

		ctrd.MustPull(t, img.Ref(reg.Host), PullOptions{})
		ctrd.AssertContent(t, reg.Content(t, img.Repo, img.Digest, nil))

		ctrd.Reset(t)
		arm := TestPlatforms[1]
		ctrd.MustPull(t, idx.Ref(reg.Host), PullOptions{Platform: arm.OS + "/" + arm.Architecture})
		ctrd.AssertContent(t, reg.Content(t, idx.Repo, idx.Digest, &arm))
		amd := TestPlatforms[0]
		ctrd.AssertNoContent(t, onlyBlobs(reg.Content(t, idx.Repo, idx.Digest, &amd)))
	})

	t.Run("skopeo", func(t *testing.T) {
		sk := NewSkopeo(t, SkopeoRegistry{Location: reg.Host})
		dir, res := sk.CopyToDir(t, "docker://"+img.Ref(reg.Host))
		if res.Err != nil {
			t.Fatalf("skopeo copy: %v", res)
		}
		AssertDir(t, dir, img.Digest.String(), reg.Content(t, img.Repo, img.Digest, nil))

		dir, res = sk.CopyToDir(t, "docker://"+idx.Ref(reg.Host), "--all")
		if res.Err != nil {
			t.Fatalf("skopeo copy --all: %v", res)
		}
		AssertDir(t, dir, idx.Digest.String(), reg.Content(t, idx.Repo, idx.Digest, nil))
	})
}

// onlyBlobs drops the index from objs (it is shared by every platform).
func onlyBlobs(objs Objects) Objects {
	out := Objects{}
	for d, o := range objs {
		if o.Kind != "index" {
			out[d] = o
		}
	}
	return out
}
