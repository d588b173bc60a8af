package faultnet

import (
	"slices"
	"testing"
	"time"
)

// TestWaiterAccuracy logs how late waiter.until returns for a few delays (it never returns early). Timings
// are logged, not asserted, beyond sanity: the machine is shared.
func TestWaiterAccuracy(t *testing.T) {
	var w waiter
	done := make(chan struct{})
	for _, d := range []time.Duration{100 * time.Microsecond, 500 * time.Microsecond, time.Millisecond, 5 * time.Millisecond} {
		late := make([]time.Duration, 0, 50)
		for range 50 {
			due := time.Now().Add(d)
			if !w.until(due, done) {
				t.Fatal("until returned false with done open")
			}
			l := time.Since(due)
			if l < 0 {
				t.Fatalf("until(%v) returned %v early", d, -l)
			}
			late = append(late, l)
		}
		slices.Sort(late)
		t.Logf("wait %6v: late by p50 %6v  p90 %6v  max %6v", d, late[25], late[45], late[49])
		if late[25] > 20*time.Millisecond {
			t.Errorf("wait %v: median lateness %v", d, late[25])
		}
	}
	close(done)
	if w.until(time.Now().Add(time.Hour), done) {
		t.Error("until returned true with done closed and the deadline an hour away")
	}
}
