package pgcc

import (
	"context"
	"log/slog"
)

// NewSlogObserver returns an [Observer] that writes each event to logger as one record, with attributes named
// as in the OpenTelemetry adapter (pgcc.label, db.collection.name, pgcc.attempt, ...). The levels say how much
// a reader should care:
//
//   - Debug: a committed attempt, a granted lock, a lease acquired, renewed or released;
//   - Info: a retried attempt, an optimistic conflict;
//   - Warn: an attempt whose error is returned, a lock not granted, a lease lost or fenced;
//   - Error: a commit whose outcome is unknown.
//
// Records below the logger's level cost a call to its handler's Enabled and nothing else. Keys are written
// with [FormatKey], so a key value cannot forge a log line. A nil logger means slog.Default().
func NewSlogObserver(logger *slog.Logger) Observer {
	if logger == nil {
		logger = slog.Default()
	}
	return slogObserver{l: logger}
}

type slogObserver struct{ l *slog.Logger }

func (s slogObserver) ObserveAttempt(ctx context.Context, e AttemptEvent) {
	level := slog.LevelDebug
	switch e.Outcome {
	case AttemptRetried:
		level = slog.LevelInfo
	case AttemptFailed:
		level = slog.LevelWarn
	case AttemptCommitUnknown:
		level = slog.LevelError
	}
	if !s.l.Enabled(ctx, level) {
		return
	}
	attrs := []slog.Attr{
		slog.String("pgcc.operation", e.Operation),
		slog.String("pgcc.label", e.Label),
		slog.Int("pgcc.attempt", e.Attempt),
		slog.String("pgcc.outcome", e.Outcome.String()),
		slog.Duration("duration", e.Duration),
	}
	if e.Isolation != "" {
		attrs = append(attrs, slog.String("pgcc.isolation", string(e.Isolation)))
	}
	if e.Err != nil {
		attrs = append(attrs, slog.String("error", e.Err.Error()))
	}
	if e.SQLState != "" {
		attrs = append(attrs, slog.String("db.response.status_code", e.SQLState))
	}
	if e.Outcome == AttemptRetried {
		attrs = append(attrs, slog.Duration("pgcc.retry_delay", e.Delay))
	}
	if e.LookUp > 0 {
		attrs = append(attrs, slog.Duration("pgcc.lookup", e.LookUp))
	}
	s.l.LogAttrs(ctx, level, "pgcc: transaction attempt", attrs...)
}

func (s slogObserver) ObserveConflict(ctx context.Context, e ConflictEvent) {
	c := e.Conflict
	if c == nil || !s.l.Enabled(ctx, slog.LevelInfo) {
		return
	}
	attrs := []slog.Attr{
		slog.String("pgcc.label", e.Label),
		slog.String("db.collection.name", c.Table),
		slog.String("db.operation.name", c.Op),
		slog.String("pgcc.key", FormatKey(c.KeyColumns, c.Key)),
		slog.Bool("pgcc.deleted", c.Deleted),
	}
	if c.ExpectedTime.IsZero() {
		attrs = append(attrs, slog.Int64("pgcc.version.expected", c.Expected))
		if !c.Deleted {
			attrs = append(attrs, slog.Int64("pgcc.version.actual", c.Actual))
		}
	} else {
		attrs = append(attrs, slog.Time("pgcc.version.expected", c.ExpectedTime))
		if !c.Deleted {
			attrs = append(attrs, slog.Time("pgcc.version.actual", c.ActualTime))
		}
	}
	s.l.LogAttrs(ctx, slog.LevelInfo, "pgcc: optimistic conflict", attrs...)
}

func (s slogObserver) ObserveLockWait(ctx context.Context, e LockWaitEvent) {
	level := slog.LevelDebug
	if e.Outcome != LockAcquired {
		level = slog.LevelWarn
	}
	if !s.l.Enabled(ctx, level) {
		return
	}
	attrs := []slog.Attr{
		slog.String("pgcc.label", e.Label),
		slog.String("pgcc.outcome", e.Outcome.String()),
		slog.Duration("pgcc.lock.wait", e.Wait),
	}
	if e.Table != "" {
		attrs = append(attrs, slog.String("db.collection.name", e.Table), slog.Int("pgcc.lock.keys", len(e.Keys)))
		if len(e.Keys) == 1 {
			attrs = append(attrs, slog.String("pgcc.key", FormatKey(e.KeyColumns, e.Keys[0])))
		}
	} else {
		attrs = append(attrs, slog.Int64("pgcc.lock.advisory_key", int64(e.Advisory)))
	}
	if e.Err != nil {
		attrs = append(attrs, slog.String("error", e.Err.Error()))
	}
	if len(e.Blockers) > 0 {
		pids := make([]int, len(e.Blockers))
		for i, b := range e.Blockers {
			pids[i] = b.PID
		}
		attrs = append(attrs, slog.Any("pgcc.lock.blocker_pids", pids))
	}
	s.l.LogAttrs(ctx, level, "pgcc: lock wait", attrs...)
}

func (s slogObserver) ObserveLease(ctx context.Context, e LeaseEvent) {
	level := slog.LevelDebug
	if e.Kind == LeaseLost || e.Kind == LeaseFenced {
		level = slog.LevelWarn
	}
	if !s.l.Enabled(ctx, level) {
		return
	}
	attrs := []slog.Attr{
		slog.String("pgcc.label", e.Label),
		slog.String("pgcc.lease.event", e.Kind.String()),
		slog.String("pgcc.lease.name", e.Name),
		slog.Int64("pgcc.lease.token", e.Token),
	}
	if e.Holder != "" {
		attrs = append(attrs, slog.String("pgcc.lease.holder", e.Holder))
	}
	if !e.Expires.IsZero() {
		attrs = append(attrs, slog.Time("pgcc.lease.expires", e.Expires))
	}
	if e.Err != nil {
		attrs = append(attrs, slog.String("error", e.Err.Error()))
	}
	s.l.LogAttrs(ctx, level, "pgcc: lease", attrs...)
}
