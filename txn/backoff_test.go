package txn_test

import (
	"testing"
	"time"

	"github.com/pgcc/pgcc/txn"
)

func TestBackoffBounds(t *testing.T) {
	t.Parallel()
	b := txn.Backoff{Base: 10 * time.Millisecond, Cap: 100 * time.Millisecond}
	wantBound := []time.Duration{10, 20, 40, 80, 100, 100}
	for i, w := range wantBound {
		n := i + 1
		bound := w * time.Millisecond
		if got := (txn.Backoff{Base: b.Base, Cap: b.Cap, NoJitter: true}).Delay(n); got != bound {
			t.Errorf("NoJitter Delay(%d) = %v, want %v", n, got, bound)
		}
		for range 200 {
			if d := b.Delay(n); d < 0 || d > bound {
				t.Fatalf("Delay(%d) = %v, outside [0, %v]", n, d, bound)
			}
		}
	}
	if got := (txn.Backoff{NoJitter: true}).Delay(1); got != txn.DefaultBackoffBase {
		t.Errorf("zero Backoff Delay(1) = %v, want the default base %v", got, txn.DefaultBackoffBase)
	}
	if got := (txn.Backoff{NoJitter: true}).Delay(1 << 30); got != txn.DefaultBackoffCap {
		t.Errorf("Delay of a huge attempt number = %v, want the cap", got)
	}
}
