package scantest

import (
	_ "github.com/aquasecurity/trivy-db/pkg/db"
	_ "github.com/aquasecurity/trivy-db/pkg/metadata"
	_ "github.com/aquasecurity/trivy-db/pkg/types"
	_ "github.com/google/go-containerregistry/pkg/v1/mutate"
)
