package faultnet

import (
	"runtime"
	"time"
)

// How a delayed flight waits for its moment. A Go timer fires on the runtime's poller, which on Linux has
// millisecond resolution: measured on a 2-core VM, time.Sleep(100µs) returns after about 1.1 ms. So a wait
// longer than coarseAbove first parks on a timer until coarseMargin before the deadline, then sleeps in the
// kernel (nanosleep, tens of microseconds late) until spinBelow before it, then yields in a loop.
const (
	coarseAbove  = 4 * time.Millisecond
	coarseMargin = 2500 * time.Microsecond
	spinBelow    = 300 * time.Microsecond
)

// waiter waits for deadlines, one goroutine's worth: it keeps its timer between waits.
type waiter struct {
	timer *time.Timer
}

// until returns true at due (or at once if due has passed), or false as soon as done is closed, if that comes
// first while parked on the timer; the last few milliseconds are not interrupted.
func (w *waiter) until(due time.Time, done <-chan struct{}) bool {
	for {
		d := time.Until(due)
		switch {
		case d <= 0:
			return true
		case d > coarseAbove:
			if w.timer == nil {
				w.timer = time.NewTimer(d - coarseMargin)
			} else {
				w.timer.Reset(d - coarseMargin)
			}
			select {
			case <-w.timer.C:
			case <-done:
				w.timer.Stop()
				return false
			}
		case d > spinBelow:
			sleepPrecise(d - spinBelow)
		default:
			runtime.Gosched()
		}
	}
}
