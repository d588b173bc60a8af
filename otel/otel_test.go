package otel_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/faultnet"
	"github.com/pgcc/pgcc/internal/pgtest"
	"github.com/pgcc/pgcc/lease"
	"github.com/pgcc/pgcc/lock"
	"github.com/pgcc/pgcc/otel"
	"github.com/pgcc/pgcc/repo"
	"github.com/pgcc/pgcc/txn"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

type Account struct {
	ID      int64 `db:"id"`
	Balance int64 `db:"balance"`
	Version int64 `db:"version"`
}

// setup returns a pool on a fresh database with account 1, its table, and an observer recording into an
// in-memory reader and span recorder.
func setup(t *testing.T) (*pgxpool.Pool, *repo.Table[Account], *otel.Observer, *sdkmetric.ManualReader, *tracetest.SpanRecorder, *sdktrace.TracerProvider) {
	t.Helper()
	pool := pgtest.NewDB(t).Pool(t)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL, version bigint NOT NULL);
		INSERT INTO accounts VALUES (1, 100, 1)`); err != nil {
		t.Fatal(err)
	}
	accounts, err := repo.NewTable[Account]("accounts")
	if err != nil {
		t.Fatal(err)
	}
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	t.Cleanup(func() {
		_ = mp.Shutdown(context.Background())
		_ = tp.Shutdown(context.Background())
	})
	obs, err := otel.New(otel.WithMeterProvider(mp), otel.WithTracerProvider(tp))
	if err != nil {
		t.Fatal(err)
	}
	return pool, accounts, obs, reader, spans, tp
}

// race runs two read-modify-write transactions on account 1 that both read before either writes, under the
// test's parent span, and fails unless both end committed.
func race(t *testing.T, ctx context.Context, pool *pgxpool.Pool, accounts *repo.Table[Account], opts ...txn.Option) {
	t.Helper()
	read := pgtest.NewBarrier(2)
	var wg sync.WaitGroup
	var errs [2]error
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			attempt := 0
			errs[i] = txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
				attempt++
				a, err := accounts.Get(ctx, tx, pgcc.Key{1})
				if err != nil {
					return err
				}
				if attempt == 1 {
					read.Wait(ctx)
				}
				a.Balance += 10
				return accounts.Update(ctx, tx, &a)
			}, opts...)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

func collect(t *testing.T, reader *sdkmetric.ManualReader) map[string]metricdata.Aggregation {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]metricdata.Aggregation{}
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name != otel.ScopeName {
			t.Errorf("scope %q", sm.Scope.Name)
		}
		for _, m := range sm.Metrics {
			out[m.Name] = m.Data
		}
	}
	return out
}

func value(set attribute.Set, key attribute.Key) string {
	v, _ := set.Value(key)
	return v.String()
}

func TestMetricsAndSpansOfASerializationFailure(t *testing.T) {
	t.Parallel()
	pool, accounts, obs, reader, spans, tp := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ctx, parent := tp.Tracer("test").Start(ctx, "handler")
	race(t, ctx, pool, accounts, txn.WithObserver(obs), txn.WithLabel("checkout"), txn.WithIsolation(pgx.Serializable))
	parent.End()

	metrics := collect(t, reader)
	attempts := metrics["pgcc.transaction.attempts"].(metricdata.Sum[int64])
	got := map[string]int64{}
	for _, dp := range attempts.DataPoints {
		got[value(dp.Attributes, "pgcc.outcome")+" "+value(dp.Attributes, "error.type")+" "+value(dp.Attributes, "db.response.status_code")] += dp.Value
		if value(dp.Attributes, "pgcc.label") != "checkout" || value(dp.Attributes, "db.system.name") != "postgresql" ||
			value(dp.Attributes, "db.operation.name") != "txn.Run" || value(dp.Attributes, "pgcc.isolation") != "serializable" {
			t.Errorf("attempt attributes %v", dp.Attributes.ToSlice())
		}
	}
	if want := map[string]int64{"committed  ": 2, "retried serialization_failure 40001": 1}; len(got) != 2 || got["committed  "] != 2 || got["retried serialization_failure 40001"] != 1 {
		t.Errorf("attempts %v, want %v", got, want)
	}
	perCall := metrics["pgcc.transaction.attempts_per_call"].(metricdata.Histogram[int64])
	if len(perCall.DataPoints) != 1 || perCall.DataPoints[0].Count != 2 || perCall.DataPoints[0].Sum != 3 {
		t.Errorf("attempts per call %+v, want two calls making 3 attempts", perCall.DataPoints)
	}
	durations := metrics["pgcc.transaction.attempt.duration"].(metricdata.Histogram[float64])
	var n uint64
	for _, dp := range durations.DataPoints {
		n += dp.Count
		if dp.Sum <= 0 {
			t.Errorf("durations sum %v", dp.Sum)
		}
	}
	if n != 3 {
		t.Errorf("%d durations, want 3", n)
	}

	var attemptSpans, failed int
	for _, s := range spans.Ended() {
		if s.Name() != "txn.Run checkout" {
			continue
		}
		attemptSpans++
		if s.Parent().SpanID() != parent.SpanContext().SpanID() {
			t.Errorf("attempt span's parent %v, want the handler's span", s.Parent().SpanID())
		}
		if s.Status().Code == codes.Error {
			failed++
		}
	}
	if attemptSpans != 3 || failed != 1 {
		t.Errorf("%d attempt spans, %d failed: want 3 and 1", attemptSpans, failed)
	}
}

func TestConflictCountedAndKeyedInTheSpan(t *testing.T) {
	t.Parallel()
	pool, accounts, obs, reader, spans, tp := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ctx, parent := tp.Tracer("test").Start(ctx, "handler")
	retry := txn.RetryIf(func(err error) bool { return errors.Is(err, pgcc.ErrConflict) })
	race(t, ctx, pool, accounts, txn.WithObserver(obs), txn.WithLabel("deposit"), retry)
	parent.End()

	conflicts := collect(t, reader)["pgcc.conflicts"].(metricdata.Sum[int64])
	if len(conflicts.DataPoints) != 1 {
		t.Fatalf("conflict points %+v", conflicts.DataPoints)
	}
	dp := conflicts.DataPoints[0]
	if dp.Value != 1 || value(dp.Attributes, "db.collection.name") != `"accounts"` || value(dp.Attributes, "db.operation.name") != pgcc.OpUpdate ||
		value(dp.Attributes, "pgcc.label") != "deposit" || value(dp.Attributes, "pgcc.deleted") != "false" {
		t.Errorf("conflicts %d %v", dp.Value, dp.Attributes.ToSlice())
	}
	var events int
	for _, s := range spans.Ended() {
		if s.Name() != "handler" {
			continue
		}
		for _, e := range s.Events() {
			if e.Name != "pgcc.conflict" {
				continue
			}
			events++
			set := attribute.NewSet(e.Attributes...)
			if value(set, "pgcc.key") != "id=1" || value(set, "pgcc.version.expected") != "1" || value(set, "pgcc.version.actual") != "2" {
				t.Errorf("conflict event %v", e.Attributes)
			}
		}
	}
	if events != 1 {
		t.Errorf("%d conflict events on the handler's span, want 1", events)
	}
}

func TestLockWaitAndLeaseEvents(t *testing.T) {
	t.Parallel()
	pool, accounts, obs, reader, spans, _ := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	holder, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := lock.Row(ctx, holder, accounts, pgcc.Key{1}); err != nil {
		t.Fatal(err)
	}
	err = txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		return lock.Row(ctx, tx, accounts, pgcc.Key{1}, lock.WithTimeout(20*time.Millisecond), lock.WithDiagnostics(pool))
	}, txn.WithObserver(obs), txn.WithLabel("checkout"))
	if !errors.Is(err, pgcc.ErrLockNotAvailable) {
		t.Fatalf("lock: %v", err)
	}
	// The span carries the blockers the error names. The diagnostics' look-up has its own 2 s bound and, on
	// a machine loaded past it, finds none (DiagnosticsErr says why): the span then has no pids either.
	var le *pgcc.LockError
	if !errors.As(err, &le) {
		t.Fatalf("lock: %v is not a *pgcc.LockError", err)
	}
	wantPIDs := []int64{int64(holder.Conn().PgConn().PID())}
	if len(le.Blockers) == 0 {
		if le.DiagnosticsErr == nil {
			t.Fatalf("lock: no blockers and no DiagnosticsErr: %v", err)
		}
		t.Logf("the blockers' look-up failed (%v): the span is checked to carry no pids", le.DiagnosticsErr)
		wantPIDs = nil
	}
	if err := holder.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	leases := lease.New(pool, lease.WithObserver(obs))
	l, err := leases.Acquire(ctx, "nightly", "worker-1", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}

	metrics := collect(t, reader)
	waits := metrics["pgcc.lock.wait.duration"].(metricdata.Histogram[float64])
	if len(waits.DataPoints) != 1 {
		t.Fatalf("lock wait points %+v", waits.DataPoints)
	}
	w := waits.DataPoints[0]
	if w.Count != 1 || w.Sum < 0.020 || value(w.Attributes, "pgcc.outcome") != "not_available" || value(w.Attributes, "db.collection.name") != `"accounts"` ||
		value(w.Attributes, "error.type") != "lock_not_available" || value(w.Attributes, "pgcc.label") != "checkout" {
		t.Errorf("lock wait %d %v %v", w.Count, w.Sum, w.Attributes.ToSlice())
	}
	leaseEvents := metrics["pgcc.lease.events"].(metricdata.Sum[int64])
	kinds := map[string]int64{}
	for _, dp := range leaseEvents.DataPoints {
		kinds[value(dp.Attributes, "pgcc.lease.event")] += dp.Value
	}
	if len(kinds) != 2 || kinds["acquired"] != 1 || kinds["released"] != 1 {
		t.Errorf("lease events %v", kinds)
	}
	var lockSpans int
	for _, s := range spans.Ended() {
		if s.Name() != `lock "accounts"` {
			continue
		}
		lockSpans++
		set := attribute.NewSet(s.Attributes()...)
		pids, _ := set.Value(otel.BlockersKey)
		if s.Status().Code != codes.Error || value(set, "pgcc.key") != "id=1" || !slices.Equal(pids.AsInt64Slice(), wantPIDs) {
			t.Errorf("lock span %v %v", s.Status(), s.Attributes())
		}
		if s.EndTime().Sub(s.StartTime()) < 20*time.Millisecond {
			t.Errorf("lock span lasted %v, less than the lock timeout", s.EndTime().Sub(s.StartTime()))
		}
	}
	if lockSpans != 1 {
		t.Errorf("%d lock spans, want 1", lockSpans)
	}
}

// TestLookUpOnTheAttemptSpan: a keyed transaction whose COMMIT reply is lost is settled by the key's look-up,
// and its attempt's span says how long the look-up took; the span of an attempt without one does not.
func TestLookUpOnTheAttemptSpan(t *testing.T) {
	t.Parallel()
	_, _, obs, _, spans, _ := setup(t)
	db := pgtest.NewDB(t)
	proxy, dsn := faultnet.ForDSN(t, db.DSN)
	pool := (&pgtest.DB{Name: db.Name, DSN: dsn}).Pool(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lose := proxy.OnQuery(faultnet.IsCommit, faultnet.LoseReply)
	touch := func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "SELECT 1")
		return err
	}
	if err := txn.Run(ctx, pool, touch, txn.WithObserver(obs), txn.WithLabel("lost"), txn.WithIdempotencyKey("lost reply")); err != nil {
		t.Fatalf("Run = %v, want nil: the look-up finds the commit", err)
	}
	if lose.Fired() != 1 {
		t.Fatalf("the COMMIT reply was lost %d times, want 1", lose.Fired())
	}
	if err := txn.Run(ctx, pool, touch, txn.WithObserver(obs), txn.WithLabel("plain")); err != nil {
		t.Fatal(err)
	}
	found := map[string]bool{}
	for _, s := range spans.Ended() {
		var lookUp *attribute.KeyValue
		for _, a := range s.Attributes() {
			if a.Key == otel.LookUpKey {
				lookUp = &a
			}
		}
		switch s.Name() {
		case "txn.Run lost":
			found[s.Name()] = true
			if lookUp == nil || lookUp.Value.AsFloat64() <= 0 || s.Status().Code == codes.Error {
				t.Errorf("span %q: look-up %v, status %v; want a positive duration and no error", s.Name(), lookUp, s.Status())
			}
		case "txn.Run plain":
			found[s.Name()] = true
			if lookUp != nil {
				t.Errorf("span %q carries %v, want no look-up", s.Name(), lookUp.Value.String())
			}
		}
	}
	if len(found) != 2 {
		t.Errorf("spans found %v, want both attempts'", found)
	}
}

func TestErrorType(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err  error
		want string
	}{
		{&pgcc.ConflictError{Table: "t"}, "conflict"},
		{&pgcc.RetriesExhaustedError{Attempts: 3, Err: &pgcc.ConflictError{Table: "t"}}, "conflict"},
		{&pgcc.CommitUnknownError{Attempts: 1, Err: errors.New("eof")}, "commit_unknown"},
		{context.DeadlineExceeded, "deadline_exceeded"},
		{errors.New("other"), "_OTHER"},
	} {
		if got := otel.ErrorType(tc.err); got != tc.want {
			t.Errorf("ErrorType(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}
