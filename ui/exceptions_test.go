package ui

import (
	"strings"
	"testing"
	"time"

	"github.com/gatehouse/gatehouse/gate/policy"
	"github.com/gatehouse/gatehouse/gate/records"
)

// exceptionSource is a source with scoped exceptions.
type exceptionSource struct {
	*fakeSource
	list []policy.ExceptionStatus
}

func (e *exceptionSource) Exceptions() []policy.ExceptionStatus { return e.list }

func TestExceptionsPage(t *testing.T) {
	src := &exceptionSource{fakeSource: newSource(), list: []policy.ExceptionStatus{
		{Exception: policy.Exception{ID: "CVE-2026-0007", Owner: "payments " + hostile, Reason: "unused " + hostile, Expires: now.Add(72 * time.Hour), Source: "/etc/x/payments.yaml"},
			Scope: policy.ExceptionScope{Repositories: []string{"payments/api"}}, State: policy.ExceptionExpiring},
		{Exception: policy.Exception{ID: "CVE-2026-0008", Owner: "platform", Reason: "old", Expires: now.Add(-time.Hour), Source: "/etc/x/platform.yaml"},
			Scope: policy.ExceptionScope{Digests: []string{digest(9)}}, State: policy.ExceptionExpired},
	}}
	exc := policy.Exception{ID: "CVE-2026-0007", Owner: "payments", Reason: "unused", Expires: now.Add(72 * time.Hour), Source: "/etc/x/payments.yaml"}
	src.details[digest(2)].Latest = &records.Verdict{Admitted: true, Rule: "strict", Message: "admitted; 1 excepted",
		Decision: &policy.Decision{Excepted: []policy.Excepted{{Finding: policy.Finding{ID: "CVE-2026-0007", Severity: "CRITICAL", PkgName: "libssl3", Installed: "3.0"}, Exception: exc}}}}
	srv := newServer(t, src)
	body := get(t, srv, "/ui/exceptions", 200)
	for _, want := range []string{`href="/ui/exceptions" aria-current="page"`, "CVE-2026-0007", "payments/api", "1 expiring soon", "1 expired",
		`class="badge sev-medium">expiring`, `class="badge v-denied">expired`, "/etc/x/platform.yaml"} {
		if !strings.Contains(body, want) {
			t.Errorf("exceptions page lacks %q", want)
		}
	}
	if strings.Contains(body, hostile) {
		t.Error("an owner or reason was not escaped")
	}
	body = get(t, srv, "/ui/images/"+digest(2), 200)
	if !strings.Contains(body, "Excepted findings") || !strings.Contains(body, "excepted by <strong>payments</strong>") {
		t.Errorf("image page does not show the exception:\n%s", body)
	}
	// Not configured.
	if body := get(t, newServer(t, newSource()), "/ui/exceptions", 200); !strings.Contains(body, "No exceptions are configured") {
		t.Error("unconfigured exceptions page")
	}
}
