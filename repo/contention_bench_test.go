package repo_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/txn"
)

// BenchmarkModifyContention runs the scenario of issue 13: 25 writers call Modify 5 times each on one row
// (125 calls), and reports how many calls gave up (exhausted/125), the attempts per call and the p99 latency
// of a call, for Modify's default policy (DefaultModifyAttempts, DefaultModifyBackoffBase and Cap), its
// previous one (txn's defaults) and a few others; docs/optimistic.md has the numbers. Each iteration is one
// whole scenario:
//
//	go test -run '^$' -bench ModifyContention -benchtime 20x ./repo/
func BenchmarkModifyContention(b *testing.B) {
	const writers, calls = 25, 5
	for _, tc := range []struct {
		name string
		opts []txn.Option
	}{
		{"default", nil},
		{"attempts=10,txn-backoff", []txn.Option{txn.WithMaxAttempts(10), txn.WithBackoff(txn.Backoff{})}}, // Modify's old default
		{"attempts=10,base=1ms", []txn.Option{txn.WithMaxAttempts(10), txn.WithBackoff(txn.Backoff{Base: time.Millisecond})}},
		{"attempts=25,txn-backoff", []txn.Option{txn.WithMaxAttempts(25), txn.WithBackoff(txn.Backoff{})}},
		{"attempts=25,base=1ms,cap=100ms", []txn.Option{txn.WithMaxAttempts(25), txn.WithBackoff(txn.Backoff{Base: time.Millisecond, Cap: 100 * time.Millisecond})}},
		{"attempts=50,base=1ms,cap=100ms", []txn.Option{txn.WithMaxAttempts(50), txn.WithBackoff(txn.Backoff{Base: time.Millisecond, Cap: 100 * time.Millisecond})}},
		{"attempts=100,base=1ms,cap=100ms", []txn.Option{txn.WithMaxAttempts(100), txn.WithBackoff(txn.Backoff{Base: time.Millisecond, Cap: 100 * time.Millisecond})}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			pool, accounts := benchSetup(b)
			ctx := context.Background()
			var exhausted, attempts, total int
			var latencies []time.Duration
			var mu sync.Mutex
			for b.Loop() {
				var wg sync.WaitGroup
				for range writers {
					wg.Go(func() {
						for range calls {
							n := 0
							start := time.Now()
							_, err := accounts.Modify(ctx, pool, pgcc.Key{int64(1)}, func(_ context.Context, a *Account) error {
								n++
								a.Balance++
								return nil
							}, tc.opts...)
							elapsed := time.Since(start)
							mu.Lock()
							total++
							attempts += n
							latencies = append(latencies, elapsed)
							if errors.Is(err, pgcc.ErrRetriesExhausted) {
								exhausted++
							} else if err != nil {
								mu.Unlock()
								b.Error(err)
								return
							}
							mu.Unlock()
						}
					})
				}
				wg.Wait()
			}
			slices.Sort(latencies)
			b.ReportMetric(float64(exhausted)*writers*calls/float64(total), "exhausted/125")
			b.ReportMetric(float64(attempts)/float64(total), "attempts/call")
			b.ReportMetric(float64(latencies[len(latencies)*99/100].Microseconds())/1000, "p99-ms")
			b.ReportMetric(0, "ns/op")
		})
	}
}
