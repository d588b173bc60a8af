package repo

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/finalwrite"
	"github.com/pgcc/pgcc/internal/pgfail"
	"github.com/pgcc/pgcc/txn"
)

// maxRewrites bounds how often a write is sent again when its conflict turned out to be a replaced row at the
// expected version (see [pgcc.ConflictError]): the row was deleted and inserted again between the write's
// snapshot and the follow-up read. Three sends make a spurious conflict vanishingly unlikely without looping
// forever on a table that replaces rows in a tight loop.
const maxRewrites = 3

// WriteOption changes what [Table.Update] and [Table.Delete] check or change. The defaults, without options,
// are the safe ones: the write lands only on the version the row was read at, and an update that changes a
// value gives the row a new version.
type WriteOption func(*writeConfig)

type writeConfig struct {
	skipCheck   bool
	keepVersion bool
	invalid     string
}

// SkipVersionCheck writes the row whatever version the database holds, by key alone: a last-writer-wins write
// that may overwrite a concurrent change, for data where that is the intent (Rails' touch without a lock,
// django-concurrency's disabled check). The version still changes when a value does, so every other holder of
// the row still conflicts; row's version field is set to the one written. A row that does not exist is a
// [*pgcc.NotFoundError].
func SkipVersionCheck() WriteOption { return func(c *writeConfig) { c.skipCheck = true } }

// KeepVersion updates the row without changing its version, for a change that must not invalidate what others
// hold (a view counter, a last-seen timestamp): they can then write over it without a conflict. Combined with
// the check (the default) the write still lands only on row's version. Not for [VersionXmin] tables, whose
// every UPDATE changes xmin, nor for Delete.
func KeepVersion() WriteOption { return func(c *writeConfig) { c.keepVersion = true } }

// writeMode is a compare-and-swap statement's shape, and what to do with the caller's row.
type writeMode struct {
	check   bool // the statement compares the version: a miss is a conflict, not a missing row
	bumps   bool // the statement returns the version after the write, to be set in the row
	restore bool // a rollback of a txn.Run transaction puts the row's version back
}

// Get reads the row with the given key, one value per key column in key order, each convertible to its key
// field's type without loss. No such row is a [*pgcc.NotFoundError] (errors.Is [pgcc.ErrNotFound]). A NULL
// counter version reads as 0.
//
// A key of the wrong length, a key value that its field could not hold exactly (3.9 for an integer key), a
// nil or NULL key value, a nil table or handle are errors matching [pgcc.ErrInvalidArgument], and nothing is
// sent. ctx governs the query.
func (t *Table[T]) Get(ctx context.Context, db pgcc.DBTX, key pgcc.Key) (T, error) {
	var row T
	if err := t.check("Get", db); err != nil {
		return row, err
	}
	if err := t.checkKey("Get", key); err != nil {
		return row, err
	}
	v := reflect.ValueOf(&row).Elem()
	dest := make([]any, len(t.fields))
	for i, f := range t.fields {
		dest[i] = v.FieldByIndex(f.index).Addr().Interface()
	}
	if err := db.QueryRow(ctx, t.sql.get, []any(key)...).Scan(dest...); err != nil {
		var zero T
		if errors.Is(err, pgx.ErrNoRows) {
			return zero, &pgcc.NotFoundError{Table: t.quoted, KeyColumns: t.KeyColumns(), Key: slices.Clone(key)}
		}
		return zero, fmt.Errorf("pgcc: get %s %s: %w", t.quoted, pgcc.FormatKey(t.keyCols, key), err)
	}
	t.track(v)
	return row, nil
}

// Insert inserts row and sets its version: 1 for a [VersionCounter] table, whatever the version field held, the
// new xmin, or the database's clock for a [VersionTimestamp] table. Columns named by [WithInsertDefaults] are
// left to their defaults and read back into row. A unique violation is returned as PostgreSQL reported it
// (errors.As finds the *pgconn.PgError, SQLSTATE 23505); [Table.InsertOrGet] is the race-free way to create a
// row that may exist. When db is a transaction of [txn.Run] that rolls back, row's version is put back as it
// was. ctx governs the statement.
func (t *Table[T]) Insert(ctx context.Context, db pgcc.DBTX, row *T) error {
	if err := t.checkRow("Insert", db, row); err != nil {
		return err
	}
	v := reflect.ValueOf(row).Elem()
	args := t.values(make([]any, 0, len(t.sql.insertArgs)), v, t.sql.insertArgs)
	var vals []reflect.Value
	var err error
	if len(t.sql.insertRet) == 0 {
		_, err = db.Exec(ctx, t.sql.insert, args...)
	} else {
		vals, err = t.scanCopies(t.sql.insertRet, db.QueryRow(ctx, t.sql.insert, args...))
	}
	if err != nil {
		return fmt.Errorf("pgcc: insert into %s: %w", t.quoted, err)
	}
	vf := v.FieldByIndex(t.version.index)
	restoreOnRollback(db, vf, nil)
	for i, pos := range t.sql.insertRet {
		v.FieldByIndex(t.fields[pos].index).Set(vals[i].Elem())
	}
	if t.d.kind == VersionCounter {
		setInt(vf, 1)
	}
	t.track(v)
	return nil
}

// scanCopies scans row into new values of the types of the fields at positions, then into extra
// destinations, so that a failed statement leaves the caller's row as it was.
func (t *Table[T]) scanCopies(positions []int, row pgx.Row, extra ...any) ([]reflect.Value, error) {
	dest := make([]any, len(positions), len(positions)+len(extra))
	vals := make([]reflect.Value, len(positions))
	for i, pos := range positions {
		vals[i] = reflect.New(t.fields[pos].typ)
		dest[i] = vals[i].Interface()
	}
	if err := row.Scan(append(dest, extra...)...); err != nil {
		return nil, err
	}
	return vals, nil
}

// Update writes every column of row except the key and the version, provided the row in the database is
// still at row's version, and on success sets row's version to the one written. One statement on the happy
// path. The version changes only when a value does: an Update that writes the values already stored leaves
// the version as it is (a [VersionXmin] table excepted, whose every UPDATE changes xmin), so that a no-op save
// does not make every other holder of the row conflict.
//
// When nothing was written, a second statement reads the row's current version (SELECT … FOR SHARE, which
// sees the newest committed version even where the UPDATE's snapshot could not) and Update returns a
// [*pgcc.ConflictError] (errors.Is [pgcc.ErrConflict]) with the version found, or with Deleted set when the
// row is gone. row is then unchanged. A row whose version field is zero is compared like any other: a row
// that was never read conflicts unless the stored row is at version 0 too.
//
// opts relax the defaults: [SkipVersionCheck], [KeepVersion]. When the row embeds [Tracked] and its key
// changed since it was read, the write is refused with [pgcc.ErrInvalidArgument] before anything is sent.
//
// When db is a transaction of [txn.Run] (or a savepoint of a nested Run) that rolls back, row's version is put
// back to what it was before the write, so that the next attempt does not conflict with a version the
// database never committed. For a pgx.Tx that Run did not give, nothing can be put back: read the row again
// after a rollback. Outside a transaction, a write whose connection failed after it was sent is a
// [*pgcc.CommitUnknownError] (it may have been applied; row is unchanged), and one whose connection could not
// be made a [*pgcc.ConnectionLostError] (nothing was sent). ctx governs both statements.
//
// Given the handle of [txn.Last] on a [VersionCounter] table, Update sends nothing: the write is queued to
// travel with the transaction's COMMIT, row's version is set to the next one (always the next one, even when
// no value changes, since it must be known before the write runs) and put back if the transaction rolls
// back. A conflict then makes the server skip COMMIT, and [txn.Run] returns the [*pgcc.ConflictError] this
// method would have returned, with the current version read after the rollback; it does not retry it. With
// [SkipVersionCheck], and on tables versioned by xmin or a timestamp, whose next version only the server
// knows, the write is sent at once, as without Last.
func (t *Table[T]) Update(ctx context.Context, db pgcc.DBTX, row *T, opts ...WriteOption) error {
	if len(opts) == 0 {
		if err := t.checkRow("Update", db, row); err != nil {
			return err
		}
		if q := t.deferrable(db); q != nil {
			return t.updateFinal(db, q, row, t.sql.finalUpdate, t.sql.updateSet, true)
		}
		return t.write(ctx, db, row, pgcc.OpUpdate, t.sql.update, t.sql.updateSet, writeMode{check: true, bumps: true, restore: true})
	}
	cfg := writeConfig{}
	for _, o := range opts {
		if o == nil {
			cfg.invalid = "a nil WriteOption"
			continue
		}
		o(&cfg)
	}
	if err := t.checkRow("Update", db, row); err != nil {
		return err
	}
	if cfg.keepVersion && t.d.kind == VersionXmin {
		cfg.invalid = "KeepVersion on a table versioned by xmin, which every UPDATE changes"
	}
	if cfg.invalid != "" {
		return fmt.Errorf("%w: Update of %s: %s", pgcc.ErrInvalidArgument, t.quoted, cfg.invalid)
	}
	ps := t.variant(t.sql.updateSet, cfg)
	if q := t.deferrable(db); q != nil && ps.final != "" {
		return t.updateFinal(db, q, row, ps.final, ps.set, !cfg.keepVersion)
	}
	return t.write(ctx, db, row, pgcc.OpUpdate, ps.sql, ps.set, writeMode{check: !cfg.skipCheck, bumps: !cfg.keepVersion, restore: true})
}

// UpdateColumns is [Table.Update] for the named columns only (their column names, as tagged): the others
// keep whatever the database holds. It is guarded by the version as Update is, and changes it the same way. An
// empty list, a key column, the version column, a column T does not map (a name with a NUL byte included) or
// a column named twice is an error matching [pgcc.ErrInvalidArgument]. The statement for each set of columns
// is built once and cached in t. Through [txn.Last] it is queued with COMMIT as Update is.
func (t *Table[T]) UpdateColumns(ctx context.Context, db pgcc.DBTX, row *T, cols ...string) error {
	if err := t.checkRow("UpdateColumns", db, row); err != nil {
		return err
	}
	set, err := t.columns(cols)
	if err != nil {
		return err
	}
	ps := t.variant(set, writeConfig{})
	if q := t.deferrable(db); q != nil {
		return t.updateFinal(db, q, row, ps.final, ps.set, true)
	}
	return t.write(ctx, db, row, pgcc.OpUpdate, ps.sql, ps.set, writeMode{check: true, bumps: true, restore: true})
}

// updateFinal queues the compare-and-swap of row as a final write (see txn.Last), having checked what write
// checks first.
func (t *Table[T]) updateFinal(db pgcc.DBTX, q finalwrite.Queuer, row *T, sql string, set []int, bump bool) error {
	if err := t.checkTracked(pgcc.OpUpdate, reflect.ValueOf(row).Elem()); err != nil {
		return err
	}
	t.queueFinal(db, q, row, pgcc.OpUpdate, sql, set, bump, true, false)
	return nil
}

// Delete deletes row provided it is still at row's version. A conflict is reported as [Table.Update]
// reports it; a row someone else deleted first is a [*pgcc.ConflictError] with Deleted set. With
// [SkipVersionCheck] it deletes by key alone, and a missing row is a [*pgcc.NotFoundError]. ctx governs the
// statements.
func (t *Table[T]) Delete(ctx context.Context, db pgcc.DBTX, row *T, opts ...WriteOption) error {
	if err := t.checkRow("Delete", db, row); err != nil {
		return err
	}
	cfg := writeConfig{}
	for _, o := range opts {
		if o == nil {
			return fmt.Errorf("%w: Delete of %s: a nil WriteOption", pgcc.ErrInvalidArgument, t.quoted)
		}
		o(&cfg)
	}
	if cfg.keepVersion {
		return fmt.Errorf("%w: Delete of %s: KeepVersion, but a delete writes no version", pgcc.ErrInvalidArgument, t.quoted)
	}
	if cfg.skipCheck {
		return t.write(ctx, db, row, pgcc.OpDelete, t.sql.deleteAny, nil, writeMode{})
	}
	return t.write(ctx, db, row, pgcc.OpDelete, t.sql.delete, nil, writeMode{check: true})
}

// ForceIncrement gives row a new version without changing any value, provided it is still at row's version
// (JPA's OPTIMISTIC_FORCE_INCREMENT): a write to a child row can so invalidate every copy of its aggregate
// root that others hold. For a [VersionXmin] table it rewrites the row unchanged, which gives it a new xmin.
// Conflicts are reported as [Table.Update] reports them, and a rollback puts row's version back as Update
// does. ctx governs the statements.
func (t *Table[T]) ForceIncrement(ctx context.Context, db pgcc.DBTX, row *T) error {
	if err := t.checkRow("ForceIncrement", db, row); err != nil {
		return err
	}
	return t.write(ctx, db, row, pgcc.OpForceIncrement, t.sql.force, nil, writeMode{check: true, bumps: true, restore: true})
}

// write runs one compare-and-swap statement whose parameters are the columns at set, the key and the
// expected version, and on a conflict reads the current version for the error (see [Table.probe]). A write
// without a check that matched no row reports the row missing.
func (t *Table[T]) write(ctx context.Context, db pgcc.DBTX, row *T, op, sql string, set []int, mode writeMode) error {
	v := reflect.ValueOf(row).Elem()
	if err := t.checkTracked(op, v); err != nil {
		return err
	}
	for n := 1; ; n++ {
		written, expected, err := t.send(ctx, db, row, op, sql, set, mode)
		if err != nil || written {
			return err
		}
		if !mode.check {
			return &pgcc.NotFoundError{Table: t.quoted, KeyColumns: t.KeyColumns(), Key: t.keyValues(v)}
		}
		actual, found, err := t.probe(ctx, db, t.keyArgs(nil, v))
		if err != nil {
			return fmt.Errorf("pgcc: %s %s %s: reading the current version after a conflict: %w", op, t.quoted, pgcc.FormatKey(t.keyCols, t.keyValues(v)), err)
		}
		if found && micros(actual.at) == micros(expected.at) && actual.n == expected.n && n < maxRewrites {
			continue // the row was replaced at the same version after the write's snapshot: write again
		}
		return t.observeConflict(ctx, db, t.conflict(op, v, expected, actual, found))
	}
}

// send sends one compare-and-swap statement for row and reports whether it wrote the row, and the version it
// compared with. When the statement returns the version after the write (mode.bumps), send sets it in row,
// having registered (mode.restore) with a [txn.Run] transaction that a rollback puts the old one back.
func (t *Table[T]) send(ctx context.Context, db pgcc.DBTX, row *T, op, sql string, set []int, mode writeMode) (bool, version, error) {
	v := reflect.ValueOf(row).Elem()
	vf := v.FieldByIndex(t.version.index)
	expected := t.versionValue(vf)
	args := t.values(make([]any, 0, len(set)+len(t.d.key)+1), v, set)
	args = t.keyArgs(args, v)
	if mode.check {
		args = append(args, t.versionArg(vf))
	}
	var written bool
	var err error
	if mode.bumps {
		if mode.restore {
			restoreOnRollback(db, vf, nil)
		}
		// Scanned straight into the row: a statement that wrote nothing (pgx.ErrNoRows) leaves it as it was.
		err = db.QueryRow(ctx, sql, args...).Scan(vf.Addr().Interface())
		written = err == nil
		if errors.Is(err, pgx.ErrNoRows) {
			err = nil
		}
	} else {
		var tag pgconn.CommandTag
		tag, err = db.Exec(ctx, sql, args...)
		written = err == nil && tag.RowsAffected() > 0
	}
	if err != nil {
		err = pgfail.Autocommit(db, fmt.Errorf("pgcc: %s %s %s: %w", op, t.quoted, pgcc.FormatKey(t.keyCols, t.keyValues(v)), err))
		return false, expected, err
	}
	return written, expected, nil
}

// version is a version value in flight: n is the counter, the xmin, or a timestamp in microseconds since the
// Unix epoch (see [Table.VersionOf]); at is the timestamp itself, zero for integer versions.
type version struct {
	n  int64
	at time.Time
}

// versionValue reads a version field.
func (t *Table[T]) versionValue(vf reflect.Value) version {
	if t.d.kind == VersionTimestamp {
		at := vf.Interface().(time.Time).Truncate(time.Microsecond)
		return version{n: micros(at), at: at}
	}
	return version{n: getInt(vf)}
}

// setVersion sets a version field.
func (t *Table[T]) setVersion(vf reflect.Value, ver version) {
	if t.d.kind == VersionTimestamp {
		vf.Set(reflect.ValueOf(ver.at))
		return
	}
	setInt(vf, ver.n)
}

// scanVersion scans a statement's single version column.
func (t *Table[T]) scanVersion(row pgx.Row) (version, error) {
	var ver version
	if t.d.kind == VersionTimestamp {
		err := row.Scan(&ver.at)
		ver.n = micros(ver.at)
		return ver, err
	}
	err := row.Scan(&ver.n)
	return ver, err
}

// restoreOnRollback registers with db, when it is a transaction (or savepoint) of [txn.Run], that a rollback
// puts the field f back to its present value, and for each extra field too. Call it before changing them. For
// any other handle it does nothing: a plain pgx.Tx has no hooks, and outside a transaction a successful
// statement is committed.
func restoreOnRollback(db pgcc.DBTX, f reflect.Value, extra []reflect.Value) {
	tx, ok := db.(pgx.Tx)
	if !ok {
		return
	}
	fields := append([]reflect.Value{f}, extra...)
	saved := make([]reflect.Value, len(fields))
	for i, f := range fields {
		saved[i] = reflect.New(f.Type()).Elem()
		saved[i].Set(f)
	}
	// The error says tx is not from txn.Run: then nothing can be restored, as documented.
	_ = txn.AfterRollback(tx, func() {
		for i, f := range fields {
			f.Set(saved[i])
		}
	})
}

// conflict is the error of a compare-and-swap on v (a T) that found the row at actual, or gone.
func (t *Table[T]) conflict(op string, v reflect.Value, expected, actual version, found bool) *pgcc.ConflictError {
	ce := &pgcc.ConflictError{Table: t.quoted, Op: op, KeyColumns: t.KeyColumns(), Key: t.keyValues(v),
		Expected: expected.n, Actual: actual.n, Deleted: !found}
	if t.d.kind == VersionTimestamp {
		ce.ExpectedTime, ce.ActualTime = expected.at, actual.at
	}
	return ce
}

// observeConflict reports ce to the observer of db's transaction, or else of the table, and returns it.
func (t *Table[T]) observeConflict(ctx context.Context, db pgcc.DBTX, ce *pgcc.ConflictError) *pgcc.ConflictError {
	if obs := pgcc.ObservationOf(db, t.observer); obs.Observer != nil {
		obs.Observer.ObserveConflict(ctx, pgcc.ConflictEvent{Label: obs.Label, Conflict: ce})
	}
	return ce
}

// probe reads the current version of the row with key, locking it FOR SHARE. The lock makes PostgreSQL
// return the newest committed row version, not the one of the statement's snapshot: under READ COMMITTED it
// waits for a transaction updating or deleting the row and then reads what it committed, and under
// REPEATABLE READ a row changed since the transaction's snapshot is a serialization failure (SQLSTATE 40001)
// for the caller's txn.Run to retry, never a stale version reported as current. FOR KEY SHARE would not do:
// it does not conflict with an UPDATE that leaves the key alone, so under REPEATABLE READ it returns the
// snapshot's version. Outside a transaction the lock ends with the statement; inside one it is held to the
// end, which only delays others' writes to a row this transaction was about to write anyway.
func (t *Table[T]) probe(ctx context.Context, db pgcc.DBTX, key []any) (ver version, found bool, err error) {
	ver, err = t.scanVersion(db.QueryRow(ctx, t.sql.probe, key...))
	if errors.Is(err, pgx.ErrNoRows) {
		return version{}, false, nil
	}
	return ver, err == nil, err
}

// Check turns the result of the caller's own compare-and-swap statement (sqlc, hand-written SQL) into the
// errors of this package. tag is what Exec returned for a statement like
//
//	UPDATE accounts SET balance = $2, version = version + 1 WHERE id = $1 AND version = $3
//
// key is the row's key and expected the version the statement compared with, as [Table.VersionOf] gives it
// (microseconds since the Unix epoch for a [VersionTimestamp] table). When tag says a row was written Check
// returns nil without a query. Otherwise it reads the row's current version as [Table.Update] does and returns
// a [*pgcc.ConflictError] with Op [pgcc.OpCheck]: Deleted when the row is gone, Actual otherwise. Actual may
// equal expected when the row was replaced at the same version after the statement's snapshot: the statement
// may then succeed if run again, and [Table.Modify] does so. The key is checked as [Table.Get] checks it. ctx
// governs the query.
func (t *Table[T]) Check(ctx context.Context, db pgcc.DBTX, tag pgconn.CommandTag, key pgcc.Key, expected int64) error {
	if err := t.check("Check", db); err != nil {
		return err
	}
	if err := t.checkKey("Check", key); err != nil {
		return err
	}
	if tag.RowsAffected() > 0 {
		return nil
	}
	actual, found, err := t.probe(ctx, db, key)
	if err != nil {
		return fmt.Errorf("pgcc: checking %s %s: %w", t.quoted, pgcc.FormatKey(t.keyCols, key), err)
	}
	exp := version{n: expected}
	if t.d.kind == VersionTimestamp {
		exp.at = fromMicros(expected)
	}
	ce := &pgcc.ConflictError{Table: t.quoted, Op: pgcc.OpCheck, KeyColumns: t.KeyColumns(), Key: slices.Clone(key), Expected: exp.n, Actual: actual.n, Deleted: !found}
	if t.d.kind == VersionTimestamp {
		ce.ExpectedTime, ce.ActualTime = exp.at, actual.at
	}
	return t.observeConflict(ctx, db, ce)
}

// Defaults of Modify's retry policy, used unless opts say otherwise. Measured with 25 writers calling Modify
// 5 times each on one row (BenchmarkModifyContention, docs/optimistic.md): with txn's defaults (10 attempts,
// backoff up to 1 s, meant for whole transactions) 12 to 14 of the 125 calls gave up and the p99 was 1.7 to
// 1.9 s; with these none gave up and the p99 was 0.6 to 0.8 s. An optimistic retry is one read and one write, so the row
// is free again within milliseconds: short sleeps and more attempts suit it.
const (
	// DefaultModifyAttempts is the number of attempts Modify makes by default, the first one included.
	DefaultModifyAttempts = 50
	// DefaultModifyBackoffBase bounds the sleep before Modify's first retry; each retry doubles the bound.
	DefaultModifyBackoffBase = time.Millisecond
	// DefaultModifyBackoffCap bounds every sleep between Modify's attempts.
	DefaultModifyBackoffCap = 50 * time.Millisecond
)

// Modify is an optimistic read-modify-write: it reads the row with key, calls fn to change it, and writes
// it back with [Table.Update]. When the write conflicts it starts again from a fresh read, so fn must be safe
// to call more than once and must decide from the row it is given. It returns the row as stored.
//
// On a [VersionCounter] table, when fn changed a field of a basic kind (an integer, float, string or bool; the
// client compares them with the row it read), the write is a plain compare-and-swap that gives the row the
// next version: the server neither compares the stored values nor returns the version, which the client
// knows. Otherwise the write is Update's, and the version stays as it is when no value changed. A field whose
// Go value changed but that the column stores alike (a JSON text reformatted, say) thus still advances the
// version, which costs a concurrent writer a retry and loses nothing.
//
// The retry policy is [txn.Retry]'s, configured by opts: attempts ([txn.WithMaxAttempts], default
// [DefaultModifyAttempts]), jittered backoff ([txn.WithBackoff], default from [DefaultModifyBackoffBase] up to
// [DefaultModifyBackoffCap]) and the context's deadline. By default it retries [pgcc.ErrConflict] and, when
// db is not a transaction, what [txn.Retryable] accepts; inside a pgx.Tx a serialization failure or deadlock
// aborts the transaction, so it is returned for the owner of the transaction (say, an enclosing [txn.Run]) to
// retry. On a pool it also retries a connection failure, the next attempt getting another connection, but
// never a write whose outcome is unknown ([pgcc.ErrCommitUnknown]). [txn.RetryIf] replaces that decision.
//
// fn's own error is returned unchanged and ends the loop. When attempts run out, the error is a
// *pgcc.RetriesExhaustedError, for which errors.Is(err, pgcc.ErrConflict) still holds. A missing row is a
// [*pgcc.NotFoundError]. The key is checked as [Table.Get] checks it. Options that shape a transaction
// (isolation, access mode, timeouts) are refused with [pgcc.ErrInvalidArgument]: Modify runs no transaction
// of its own; call it inside [txn.Run] with those options and pass it the pgx.Tx. ctx governs every statement
// and every sleep, and is passed to fn.
//
// Inside [txn.Run], given txn.Last(tx) instead of tx, Modify reads the row (in the round trip that carries
// BEGIN), calls fn, and queues the compare-and-swap to travel with COMMIT: the transaction costs two round
// trips instead of three. The row returned is fn's result with the next version, computed by the client:
// the write always gives the row the next version, even when fn changed no value, and columns a trigger sets
// are not seen (as they are not by Update). A conflict is found by the server at COMMIT, after Modify
// returned: nothing of the transaction commits, and Run runs the whole transaction again, fn included, under
// Run's attempts and backoff (opts then only shape the read), reporting the [*pgcc.ConflictError] to
// [txn.OnRetry] hooks and returning it when the attempts run out. This applies to [VersionCounter] tables;
// on tables versioned by xmin or a timestamp, whose next version only the server knows, Modify writes at
// once and retries conflicts itself, as with tx. See [txn.Last] and docs/latency.md.
func (t *Table[T]) Modify(ctx context.Context, db pgcc.DBTX, key pgcc.Key, fn func(ctx context.Context, row *T) error, opts ...txn.Option) (T, error) {
	var out T
	if err := t.check("Modify", db); err != nil {
		return out, err
	}
	if fn == nil {
		return out, fmt.Errorf("%w: Modify of %s needs a function", pgcc.ErrInvalidArgument, t.quoted)
	}
	if err := t.checkKey("Modify", key); err != nil {
		return out, err
	}
	retry := modifyRetryOutside
	if _, inTx := db.(pgx.Tx); inTx {
		retry = modifyRetryInTx
	} else if pgfail.Reconnects(db) {
		retry = modifyRetryOnPool
	}
	// Modify's attempts are a txn.Retry's: they go to the transaction's (or table's) observer, if any.
	obs := pgcc.ObservationOf(db, t.observer)
	var buf [8]txn.Option // the usual options fit: no allocation
	all := append(buf[:0], retry, modifyAttempts, modifyBackoff)
	if obs.Observer != nil {
		all = append(all, txn.WithObserver(obs.Observer), txn.WithLabel(obs.Label))
	}
	all = append(all, opts...)
	// After a conflict the row is read once: that read is both the actual version the error reports and the
	// starting point of the next attempt. A plain read is honest here, unlike after a bare Update: outside a
	// transaction, and inside a READ COMMITTED one, it is a new snapshot taken after the UPDATE saw the newer
	// version committed; inside a REPEATABLE READ or SERIALIZABLE one, a concurrent change makes the UPDATE
	// fail with a serialization error instead of matching no row.
	var next *T
	started := false
	err := txn.Retry(ctx, func(ctx context.Context) error {
		started = true
		var row T
		if next != nil {
			row, next = *next, nil
		} else {
			var err error
			if row, err = t.Get(ctx, db, key); err != nil {
				return connectionLost(db, err)
			}
		}
		before := row
		if err := fn(ctx, &row); err != nil {
			return err
		}
		rv := reflect.ValueOf(&row).Elem()
		if err := t.checkTracked(pgcc.OpUpdate, rv); err != nil {
			return err
		}
		if q := t.deferrable(db); q != nil {
			// Sent with COMMIT; a conflict found there is retried by txn.Run, which runs fn (and this) again.
			t.queueFinal(db, q, &row, pgcc.OpUpdate, t.sql.finalUpdate, t.sql.updateSet, true, false, true)
			out = row
			return nil
		}
		// The row is Modify's own copy: no rollback needs to put its version back.
		var written bool
		var expected version
		var err error
		if t.changed(reflect.ValueOf(&before).Elem(), rv) {
			// fn changed a value, so the version must advance: the plain compare-and-swap says so without the
			// server comparing the row's values or returning the version, which the client knows.
			written, expected, err = t.send(ctx, db, &row, pgcc.OpUpdate, t.sql.bumpUpdate, t.sql.updateSet, writeMode{check: true})
			if written {
				setInt(rv.FieldByIndex(t.version.index), expected.n+1)
			}
		} else {
			written, expected, err = t.send(ctx, db, &row, pgcc.OpUpdate, t.sql.update, t.sql.updateSet, writeMode{check: true, bumps: true})
		}
		if err != nil {
			return connectionLost(db, err)
		}
		if written {
			out = row
			return nil
		}
		current, err := t.Get(ctx, db, key)
		if errors.Is(err, pgcc.ErrNotFound) {
			return t.observeConflict(ctx, db, t.conflict(pgcc.OpUpdate, rv, expected, version{}, false))
		}
		if err != nil {
			return connectionLost(db, err)
		}
		next = &current
		return t.observeConflict(ctx, db, t.conflict(pgcc.OpUpdate, rv, expected, t.versionValue(reflect.ValueOf(&current).Elem().FieldByIndex(t.version.index)), true))
	}, all...)
	if err != nil {
		var zero T
		if !started && errors.Is(err, pgcc.ErrInvalidArgument) {
			return zero, t.modifyOptionsError(err, opts)
		}
		return zero, err
	}
	return out, nil
}

// changed reports whether a field UPDATE sets holds a different value in after than in before, judged by the
// client, for a [VersionCounter] table. Only fields of a basic kind (integers, floats, strings, booleans) are
// compared, without reflection's allocations; a field of another kind (a time, a slice, a struct) does not
// count as changed. So false means "not known to have changed", and the write then lets the server compare
// the values (and keep the version when none changed). true may be wrong in one direction only: two Go values
// that differ but that the column stores alike (a JSON text reformatted, say) bump the version although the
// stored row is the same, which costs another writer a retry and loses nothing.
func (t *Table[T]) changed(before, after reflect.Value) bool {
	if t.d.kind != VersionCounter || t.sql.bumpUpdate == "" {
		return false
	}
	for _, pos := range t.sql.updateSet {
		idx := t.fields[pos].index
		a, b := before.FieldByIndex(idx), after.FieldByIndex(idx)
		switch a.Kind() {
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
			if a.Int() != b.Int() {
				return true
			}
		case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
			if a.Uint() != b.Uint() {
				return true
			}
		case reflect.Float32, reflect.Float64:
			// NaN differs from itself: the server, comparing stored images, sees the same NaN.
			if x, y := a.Float(), b.Float(); x != y && x == x && y == y {
				return true
			}
		case reflect.String:
			if a.String() != b.String() {
				return true
			}
		case reflect.Bool:
			if a.Bool() != b.Bool() {
				return true
			}
		}
	}
	return false
}

// Modify's default attempts, backoff and retry decisions, made once: an option is a closure, which allocates.
var (
	modifyAttempts     = txn.WithMaxAttempts(DefaultModifyAttempts)
	modifyBackoff      = txn.WithBackoff(txn.Backoff{Base: DefaultModifyBackoffBase, Cap: DefaultModifyBackoffCap})
	modifyRetryInTx    = txn.RetryIf(retryConflict)
	modifyRetryOnPool  = txn.RetryIf(retryConflictRetryableOrLost)
	modifyRetryOutside = txn.RetryIf(retryConflictOrRetryable)
)

func retryConflict(err error) bool { return errors.Is(err, pgcc.ErrConflict) }

// connectionLost types a connection failure of one of Modify's statements outside a transaction as a
// [*pgcc.ConnectionLostError], so that the caller matches [pgcc.ErrConnectionLost] whether the failure ended
// the call or was the last of its attempts. Only certain failures reach it: a write whose outcome is unknown
// is a [*pgcc.CommitUnknownError] already. Inside a transaction the error is the transaction owner's to judge.
func connectionLost(db pgcc.DBTX, err error) error {
	if _, inTx := db.(pgx.Tx); inTx || errors.Is(err, pgcc.ErrCommitUnknown) || errors.Is(err, pgcc.ErrConnectionLost) ||
		!pgfail.ConnectionFailed(err) {
		return err
	}
	return &pgcc.ConnectionLostError{Attempts: 1, SingleConnection: !pgfail.Reconnects(db), Err: err}
}

func retryConflictOrRetryable(err error) bool {
	return errors.Is(err, pgcc.ErrConflict) || txn.Retryable(err)
}

// retryConflictRetryableOrLost also retries a connection failure on a pool, whose next attempt gets another
// connection: a read that failed wrote nothing. A write whose outcome is unknown is never retried.
func retryConflictRetryableOrLost(err error) bool {
	return retryConflictOrRetryable(err) || !errors.Is(err, pgcc.ErrCommitUnknown) && pgfail.ConnectionFailed(err)
}

// partialKey identifies a cached UPDATE: the set columns' positions and the write options.
type partialKey struct {
	set        string // the positions, one byte each (a struct maps at most a few hundred columns), sorted
	skip, keep bool
}

// columns resolves the column names of UpdateColumns to positions in canonical (struct) order, refusing
// anything that is not a settable mapped column.
func (t *Table[T]) columns(cols []string) ([]int, error) {
	if len(cols) == 0 {
		return nil, fmt.Errorf("%w: UpdateColumns of %s needs at least one column", pgcc.ErrInvalidArgument, t.quoted)
	}
	set := make([]int, 0, len(cols))
	for _, c := range cols {
		pos := slices.Index(t.d.cols, c)
		switch {
		case strings.IndexByte(c, 0) >= 0:
			return nil, fmt.Errorf("%w: UpdateColumns of %s: column name %q contains a NUL byte", pgcc.ErrInvalidArgument, t.quoted, c)
		case pos < 0:
			return nil, fmt.Errorf("%w: UpdateColumns of %s: no column %q is mapped to a field", pgcc.ErrInvalidArgument, t.quoted, c)
		case pos == t.d.version:
			return nil, fmt.Errorf("%w: UpdateColumns of %s: %q is the version column, which the write itself sets", pgcc.ErrInvalidArgument, t.quoted, c)
		case t.d.isKey(pos):
			return nil, fmt.Errorf("%w: UpdateColumns of %s: %q is a key column, which identifies the row and is never updated", pgcc.ErrInvalidArgument, t.quoted, c)
		case slices.Contains(set, pos):
			return nil, fmt.Errorf("%w: UpdateColumns of %s: column %q given twice", pgcc.ErrInvalidArgument, t.quoted, c)
		}
		set = append(set, pos)
	}
	slices.Sort(set)
	return set, nil
}

// variant returns the cached UPDATE of the columns at set (sorted positions) with the write options of cfg,
// building it on first use.
func (t *Table[T]) variant(set []int, cfg writeConfig) *partialStmt {
	var b strings.Builder
	for _, pos := range set {
		b.WriteString(strconv.Itoa(pos))
		b.WriteByte(',')
	}
	key := partialKey{set: b.String(), skip: cfg.skipCheck, keep: cfg.keepVersion}
	if ps, ok := t.partial.Load(key); ok {
		return ps.(*partialStmt)
	}
	nps := &partialStmt{set: set, sql: t.d.updateSQL(set, !cfg.skipCheck, !cfg.keepVersion)}
	if t.d.kind == VersionCounter && !cfg.skipCheck {
		nps.final = t.d.finalUpdateSQL(set, !cfg.keepVersion)
	}
	ps, _ := t.partial.LoadOrStore(key, nps)
	return ps.(*partialStmt)
}

// modifyOptionsError explains why Modify refused its options (err, from txn.Retry, before any attempt). An
// option that would be valid for a transaction (isolation, access mode, a timeout) is one Modify cannot
// honour, since it runs none: the message names it and says where it belongs. Any other invalid option
// (zero attempts, a nil option) is described by err itself, which is returned.
func (t *Table[T]) modifyOptionsError(err error, opts []txn.Option) error {
	for _, o := range opts {
		if o == nil || !shapesTransaction(o) {
			continue
		}
		return fmt.Errorf("%w: Modify of %s: %s sets up a transaction, and Modify runs none of its own; call Modify inside txn.Run(…, %s(…)) and pass it the pgx.Tx", pgcc.ErrInvalidArgument, t.quoted, optionName(o), optionName(o))
	}
	return err
}
