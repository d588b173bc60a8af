//go:build !linux

package faultnet

import "time"

// sleepPrecise sleeps for d with the runtime's timers, as precise as this platform makes them.
func sleepPrecise(d time.Duration) { time.Sleep(d) }
