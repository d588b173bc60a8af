package faultnet

import (
	"syscall"
	"time"
)

// sleepPrecise blocks the calling thread in the kernel for d: nanosleep is served by high-resolution timers,
// unlike the runtime's poller.
func sleepPrecise(d time.Duration) {
	ts := syscall.NsecToTimespec(d.Nanoseconds())
	for {
		var left syscall.Timespec
		if err := syscall.Nanosleep(&ts, &left); err != syscall.EINTR {
			return
		}
		ts = left
	}
}
