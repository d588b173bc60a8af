//go:build unix

package repo_test

import (
	"syscall"
	"time"
)

// cpuTime is the CPU time, user and system, this process has used: the client's share of a benchmark, which
// the server's and the network's noise does not reach.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
