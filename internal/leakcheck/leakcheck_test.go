package leakcheck

import (
	"strings"
	"testing"
	"time"
)

func TestCheckFindsAndForgivesGoroutines(t *testing.T) {
	base := Take()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		parkedForLeakTest(stop)
	}()

	err := base.Check(50 * time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "parkedForLeakTest") {
		t.Fatalf("Check = %v, want an error naming the running goroutine", err)
	}
	if err := base.Check(50*time.Millisecond, "github.com/pgcc/pgcc/internal/leakcheck.parkedForLeakTest"); err != nil {
		t.Fatalf("Check with the goroutine ignored = %v, want nil", err)
	}
	close(stop)
	<-done
	if err := base.Check(2 * time.Second); err != nil {
		t.Fatalf("Check after the goroutine ended = %v, want nil", err)
	}
}

func TestCheckWaitsForGoroutinesEnding(t *testing.T) {
	base := Take()
	go time.Sleep(100 * time.Millisecond)
	if err := base.Check(5 * time.Second); err != nil {
		t.Fatalf("Check = %v, want nil once the sleeping goroutine has returned", err)
	}
}

func TestParse(t *testing.T) {
	entry := "goroutine 42 [chan receive, 3 minutes]:\n" +
		"example.com/p.(*T).wait(0xc000010000)\n\t/src/p/p.go:10 +0x1d\n" +
		"created by example.com/p.Start in goroutine 7\n\t/src/p/p.go:20 +0x2f"
	g, ok := parse(entry)
	if !ok || g.id != 42 {
		t.Fatalf("parse = %+v, %v", g, ok)
	}
	want := []string{"example.com/p.(*T).wait", "example.com/p.Start"}
	if strings.Join(g.funcs, " ") != strings.Join(want, " ") {
		t.Fatalf("funcs = %q, want %q", g.funcs, want)
	}
	if _, ok := parse("not a stack"); ok {
		t.Fatal("parse accepted a line that is no goroutine header")
	}
}

//go:noinline
func parkedForLeakTest(stop chan struct{}) { <-stop }
