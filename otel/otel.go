// Package otel is pgcc's OpenTelemetry adapter: a [pgcc.Observer] that turns the events of txn, repo, lock
// and lease into metrics and spans. It is a module of its own (github.com/pgcc/pgcc/otel), so that a service
// that does not use OpenTelemetry never has it in its module graph.
//
//	obs, err := otel.New(otel.WithMeterProvider(mp), otel.WithTracerProvider(tp))
//	…
//	err = txn.Run(ctx, pool, fn, txn.WithObserver(obs), txn.WithLabel("checkout"))
//
// # Metrics
//
// Attribute names follow OpenTelemetry's database semantic conventions where one fits (db.system.name is
// always postgresql; db.collection.name, db.operation.name, db.response.status_code, error.type); the rest
// are pgcc's own, under pgcc.*. Keys of rows are never metric attributes (their number is unbounded): they
// are in the span events.
//
//   - pgcc.transaction.attempts (counter, {attempt}): every attempt of txn.Run and txn.Retry, by pgcc.label,
//     db.operation.name (txn.Run or txn.Retry), pgcc.outcome (committed, retried, failed, commit_unknown),
//     pgcc.isolation, and for a failed or retried attempt error.type and db.response.status_code.
//   - pgcc.transaction.attempt.duration (histogram, s): the time of each attempt, same attributes.
//   - pgcc.transaction.attempts_per_call (histogram, {attempt}): for each call of Run or Retry, the number
//     of attempts it made, by pgcc.label, db.operation.name and pgcc.outcome of the last one. Its mean
//     for outcome committed is the attempts paid per committed transaction.
//   - pgcc.conflicts (counter, {conflict}): optimistic conflicts, by db.collection.name, db.operation.name
//     (update, delete, …), pgcc.label and pgcc.deleted.
//   - pgcc.lock.wait.duration (histogram, s): lock requests, by db.collection.name (or pgcc.lock.kind
//     advisory), pgcc.outcome (acquired, not_available, deadlock, interrupted, failed) and pgcc.label.
//   - pgcc.lease.events (counter, {event}): lease grants, renewals, releases, losses and fencings, by
//     pgcc.lease.event.
//
// # Spans
//
// Each attempt is a client span named after its operation and label ("txn.Run checkout"), child of the span
// in the context given to Run, timed from the attempt's start to its end, with status Error when it did not
// commit. Each lock request is a span ("lock \"accounts\"", "lock advisory") timed by its wait. Conflicts and
// lease events are span events ("pgcc.conflict", "pgcc.lease") on the span of the operation's context,
// carrying the row's key and versions, or the lease's name and token.
package otel

import (
	"context"
	"errors"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/pgcc/pgcc"
)

// ScopeName is the instrumentation scope of the meter and the tracer.
const ScopeName = "github.com/pgcc/pgcc/otel"

// Attribute keys of pgcc's own (the others are semconv's).
const (
	LabelKey       = attribute.Key("pgcc.label")
	OutcomeKey     = attribute.Key("pgcc.outcome")
	IsolationKey   = attribute.Key("pgcc.isolation")
	AttemptKey     = attribute.Key("pgcc.attempt")
	DeletedKey     = attribute.Key("pgcc.deleted")
	KeyKey         = attribute.Key("pgcc.key")
	ExpectedKey    = attribute.Key("pgcc.version.expected")
	ActualKey      = attribute.Key("pgcc.version.actual")
	LockKindKey    = attribute.Key("pgcc.lock.kind")
	LockKeysKey    = attribute.Key("pgcc.lock.keys")
	AdvisoryKey    = attribute.Key("pgcc.lock.advisory_key")
	BlockersKey    = attribute.Key("pgcc.lock.blocker_pids")
	LeaseEventKey  = attribute.Key("pgcc.lease.event")
	LeaseNameKey   = attribute.Key("pgcc.lease.name")
	LeaseTokenKey  = attribute.Key("pgcc.lease.token")
	LeaseHolderKey = attribute.Key("pgcc.lease.holder")

	// LookUpKey is the duration in seconds of an attempt's idempotency-key look-up (see
	// pgcc.AttemptEvent.LookUp), on the attempt's span when one ran.
	LookUpKey = attribute.Key("pgcc.lookup.duration")
)

// Option configures [New].
type Option func(*config)

type config struct {
	mp metric.MeterProvider
	tp trace.TracerProvider
}

// WithMeterProvider sets the meter provider; the default is the global one (otel.GetMeterProvider).
func WithMeterProvider(mp metric.MeterProvider) Option { return func(c *config) { c.mp = mp } }

// WithTracerProvider sets the tracer provider; the default is the global one (otel.GetTracerProvider).
func WithTracerProvider(tp trace.TracerProvider) Option { return func(c *config) { c.tp = tp } }

// Observer is the [pgcc.Observer] that records metrics and spans. It is safe for concurrent use.
type Observer struct {
	tracer          trace.Tracer
	attempts        metric.Int64Counter
	attemptDuration metric.Float64Histogram
	attemptsPerCall metric.Int64Histogram
	conflicts       metric.Int64Counter
	lockWait        metric.Float64Histogram
	leaseEvents     metric.Int64Counter
}

var _ pgcc.Observer = (*Observer)(nil)

// New creates the instruments. Its error is the meter provider's, should it refuse one.
func New(opts ...Option) (*Observer, error) {
	var c config
	for _, o := range opts {
		if o != nil {
			o(&c)
		}
	}
	if c.mp == nil {
		c.mp = otel.GetMeterProvider()
	}
	if c.tp == nil {
		c.tp = otel.GetTracerProvider()
	}
	meter := c.mp.Meter(ScopeName, metric.WithSchemaURL(semconv.SchemaURL))
	o := &Observer{tracer: c.tp.Tracer(ScopeName, trace.WithSchemaURL(semconv.SchemaURL))}
	var errs [6]error
	o.attempts, errs[0] = meter.Int64Counter("pgcc.transaction.attempts", metric.WithUnit("{attempt}"),
		metric.WithDescription("Attempts of txn.Run and txn.Retry, by outcome."))
	o.attemptDuration, errs[1] = meter.Float64Histogram("pgcc.transaction.attempt.duration", metric.WithUnit("s"),
		metric.WithDescription("Duration of each attempt of txn.Run and txn.Retry."),
		metric.WithExplicitBucketBoundaries(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
	o.attemptsPerCall, errs[2] = meter.Int64Histogram("pgcc.transaction.attempts_per_call", metric.WithUnit("{attempt}"),
		metric.WithDescription("Attempts each call of txn.Run or txn.Retry made, by the outcome of its last attempt."),
		metric.WithExplicitBucketBoundaries(1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 50))
	o.conflicts, errs[3] = meter.Int64Counter("pgcc.conflicts", metric.WithUnit("{conflict}"),
		metric.WithDescription("Optimistic conflicts (version compare-and-swap writes that found another version)."))
	o.lockWait, errs[4] = meter.Float64Histogram("pgcc.lock.wait.duration", metric.WithUnit("s"),
		metric.WithDescription("Time lock requests waited, by outcome."),
		metric.WithExplicitBucketBoundaries(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30))
	o.leaseEvents, errs[5] = meter.Int64Counter("pgcc.lease.events", metric.WithUnit("{event}"),
		metric.WithDescription("Lease grants, renewals, releases, losses and fencings."))
	if err := errors.Join(errs[:]...); err != nil {
		return nil, err
	}
	return o, nil
}

// ObserveAttempt records the attempt's counters, its duration and, for a call's last attempt, the number of
// attempts; and a span for it.
func (o *Observer) ObserveAttempt(ctx context.Context, e pgcc.AttemptEvent) {
	attrs := make([]attribute.KeyValue, 0, 7)
	attrs = append(attrs, semconv.DBSystemNamePostgreSQL, semconv.DBOperationName(e.Operation),
		LabelKey.String(e.Label), OutcomeKey.String(e.Outcome.String()))
	if e.Isolation != "" {
		attrs = append(attrs, IsolationKey.String(string(e.Isolation)))
	}
	if e.Err != nil {
		attrs = append(attrs, semconv.ErrorTypeKey.String(ErrorType(e.Err)))
	}
	if e.SQLState != "" {
		attrs = append(attrs, semconv.DBResponseStatusCode(e.SQLState))
	}
	set := attribute.NewSet(attrs...)
	o.attempts.Add(ctx, 1, metric.WithAttributeSet(set))
	o.attemptDuration.Record(ctx, e.Duration.Seconds(), metric.WithAttributeSet(set))
	if e.Outcome != pgcc.AttemptRetried {
		o.attemptsPerCall.Record(ctx, int64(e.Attempt), metric.WithAttributes(semconv.DBSystemNamePostgreSQL,
			semconv.DBOperationName(e.Operation), LabelKey.String(e.Label), OutcomeKey.String(e.Outcome.String())))
	}

	name := e.Operation
	if e.Label != "" {
		name += " " + e.Label
	}
	end := time.Now()
	_, span := o.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindClient), trace.WithTimestamp(end.Add(-e.Duration)),
		trace.WithAttributes(attrs...), trace.WithAttributes(AttemptKey.Int(e.Attempt)))
	if e.LookUp > 0 {
		span.SetAttributes(LookUpKey.Float64(e.LookUp.Seconds()))
	}
	if e.Outcome != pgcc.AttemptCommitted {
		if e.Err != nil {
			span.RecordError(e.Err, trace.WithTimestamp(end))
			span.SetStatus(codes.Error, e.Err.Error())
		} else {
			span.SetStatus(codes.Error, e.Outcome.String())
		}
	}
	span.End(trace.WithTimestamp(end))
}

// ObserveConflict counts the conflict and adds a pgcc.conflict event, with the key and versions, to the span
// of ctx.
func (o *Observer) ObserveConflict(ctx context.Context, e pgcc.ConflictEvent) {
	c := e.Conflict
	if c == nil {
		return
	}
	o.conflicts.Add(ctx, 1, metric.WithAttributes(semconv.DBSystemNamePostgreSQL, semconv.DBCollectionName(c.Table),
		semconv.DBOperationName(c.Op), LabelKey.String(e.Label), DeletedKey.Bool(c.Deleted)))
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		span.AddEvent("pgcc.conflict", trace.WithAttributes(semconv.DBCollectionName(c.Table), semconv.DBOperationName(c.Op),
			KeyKey.String(pgcc.FormatKey(c.KeyColumns, c.Key)), ExpectedKey.Int64(c.Expected), ActualKey.Int64(c.Actual),
			DeletedKey.Bool(c.Deleted), LabelKey.String(e.Label)))
	}
}

// ObserveLockWait records the wait and a span timed by it.
func (o *Observer) ObserveLockWait(ctx context.Context, e pgcc.LockWaitEvent) {
	attrs := make([]attribute.KeyValue, 0, 6)
	attrs = append(attrs, semconv.DBSystemNamePostgreSQL, OutcomeKey.String(e.Outcome.String()), LabelKey.String(e.Label))
	name := "lock advisory"
	if e.Table != "" {
		attrs = append(attrs, semconv.DBCollectionName(e.Table), LockKindKey.String("row"))
		name = "lock " + e.Table
	} else {
		attrs = append(attrs, LockKindKey.String("advisory"))
	}
	if e.Err != nil {
		attrs = append(attrs, semconv.ErrorTypeKey.String(ErrorType(e.Err)))
	}
	o.lockWait.Record(ctx, e.Wait.Seconds(), metric.WithAttributes(attrs...))

	end := time.Now()
	_, span := o.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindClient), trace.WithTimestamp(end.Add(-e.Wait)),
		trace.WithAttributes(attrs...))
	if span.IsRecording() {
		if e.Table != "" {
			span.SetAttributes(LockKeysKey.Int(len(e.Keys)))
			if len(e.Keys) == 1 {
				span.SetAttributes(KeyKey.String(pgcc.FormatKey(e.KeyColumns, e.Keys[0])))
			}
		} else {
			span.SetAttributes(AdvisoryKey.Int64(int64(e.Advisory)))
		}
		if len(e.Blockers) > 0 {
			pids := make([]int64, len(e.Blockers))
			for i, b := range e.Blockers {
				pids[i] = int64(b.PID)
			}
			span.SetAttributes(BlockersKey.Int64Slice(pids))
		}
		if e.Err != nil {
			span.RecordError(e.Err, trace.WithTimestamp(end))
			span.SetStatus(codes.Error, e.Outcome.String())
		}
	}
	span.End(trace.WithTimestamp(end))
}

// ObserveLease counts the event and adds a pgcc.lease event to the span of ctx.
func (o *Observer) ObserveLease(ctx context.Context, e pgcc.LeaseEvent) {
	o.leaseEvents.Add(ctx, 1, metric.WithAttributes(LeaseEventKey.String(e.Kind.String())))
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		attrs := []attribute.KeyValue{LeaseEventKey.String(e.Kind.String()), LeaseNameKey.String(e.Name),
			LeaseTokenKey.Int64(e.Token), LabelKey.String(e.Label)}
		if e.Holder != "" {
			attrs = append(attrs, LeaseHolderKey.String(e.Holder))
		}
		if e.Err != nil {
			attrs = append(attrs, semconv.ErrorTypeKey.String(ErrorType(e.Err)))
		}
		span.AddEvent("pgcc.lease", trace.WithAttributes(attrs...))
	}
}

// conditions are the sentinels [ErrorType] names, most specific first.
var conditions = []struct {
	err  error
	name string
}{
	{pgcc.ErrCommitUnknown, "commit_unknown"},
	{pgcc.ErrConflict, "conflict"},
	{pgcc.ErrSerialization, "serialization_failure"},
	{pgcc.ErrDeadlock, "deadlock"},
	{pgcc.ErrLockNotAvailable, "lock_not_available"},
	{pgcc.ErrFenced, "fenced"},
	{pgcc.ErrHeld, "held"},
	{pgcc.ErrNotFound, "not_found"},
	{pgcc.ErrConnectionLost, "connection_lost"},
	{pgcc.ErrAlreadyApplied, "already_applied"},
	{pgcc.ErrInvalidArgument, "invalid_argument"},
	{context.DeadlineExceeded, "deadline_exceeded"},
	{context.Canceled, "canceled"},
}

// ErrorType is the error.type attribute of err: the pgcc condition it matches (conflict,
// serialization_failure, deadlock, lock_not_available, commit_unknown, …), else its SQLSTATE, else _OTHER,
// as the semantic conventions ask for an error of no known kind.
func ErrorType(err error) string {
	for _, c := range conditions {
		if errors.Is(err, c.err) {
			return c.name
		}
	}
	if code := pgcc.SQLState(err); code != "" {
		return code
	}
	return "_OTHER"
}
