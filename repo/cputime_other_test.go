//go:build !unix

package repo_test

import "time"

// cpuTime is not measured on this platform; benchmarks then report no client CPU time.
func cpuTime() time.Duration { return 0 }
