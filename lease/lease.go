package lease

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/lockwait"
	"github.com/pgcc/pgcc/internal/pgfail"
)

// Leases grants named, time-bounded ownership recorded in the table pgcc.leases (created by package
// migrations). A lease outlives transactions and connections, so it suits work that runs for minutes: one
// batch job per project at a time, one leader among replicas. Every grant carries a fencing token that
// [Guard] checks inside the holder's write transactions.
//
// All times are the database's clock (clock_timestamp()), never the caller's.
type Leases struct {
	db       pgcc.DBTX
	observer pgcc.Observer
}

// New returns the leases stored in the database behind db, typically a *pgxpool.Pool. Each call of its
// methods is one autocommitted statement on db. A nil db (a typed nil included) makes every method return an
// error matching [pgcc.ErrInvalidArgument].
func New(db pgcc.DBTX, opts ...Option) *Leases {
	ls := &Leases{db: db}
	for _, o := range opts {
		if o != nil {
			o(ls)
		}
	}
	return ls
}

// Option configures [New].
type Option func(*Leases)

// WithObserver reports the grants, renewals (a [Keeper]'s included), releases, losses and fencings of the
// leases to o ([pgcc.LeaseEvent]). A nil o attaches nothing.
func WithObserver(o pgcc.Observer) Option {
	return func(ls *Leases) { ls.observer = o }
}

// observe reports an event of this store's leases, when an observer is attached.
func (ls *Leases) observe(ctx context.Context, kind pgcc.LeaseEventKind, name, holder string, token int64, expires time.Time, err error) {
	if ls.observer != nil {
		ls.observer.ObserveLease(ctx, pgcc.LeaseEvent{Kind: kind, Name: name, Holder: holder, Token: token, Expires: expires, Err: err})
	}
}

// Lease is one grant of a named lease. Its methods are not safe for concurrent use; while a [Keeper] renews it,
// call only [Lease.Release] (after [Keeper.Stop]).
type Lease struct {
	// Name is the lease's name.
	Name string
	// Holder is who holds it, as given to Acquire.
	Holder string
	// Token is the grant's fencing token. Tokens of one name strictly increase with every grant, release and
	// re-acquisition included, and across a failover: the first grant on a promoted standby is at least
	// 2^32 + 1 above the old primary's timeline (migration 0003, docs/deployment.md).
	Token int64
	// Acquired is when the grant was made, on the database clock.
	Acquired time.Time
	// Expires is when the grant ends unless renewed, on the database clock; Renew moves it.
	Expires time.Time
	// TTL is the duration each renewal extends the grant by, counted from the renewal.
	TTL time.Duration

	leases *Leases
	// trusted is when the grant ends at the earliest, on this process's monotonic clock: the time the last
	// successful grant or renewal was sent, plus TTL (the server computed its expiry later than that).
	trusted time.Time
}

// MaxNameBytes is the longest lease name or holder accepted, in bytes.
const MaxNameBytes = 1024

// The lease statements. A lease row is never deleted: releasing it only moves its expiry to now, so the next
// grant continues from its token. A grant takes over a row only once it has expired, and the conflicting
// INSERT … ON CONFLICT DO UPDATE locks the row (FOR NO KEY UPDATE), so it waits for every transaction that
// [Guard] let write under the old token. The acquire statement also returns the database clock, from which
// Acquire computes how long to wait without asking again.
//
// A token is the name's previous token plus one, but never less than pgcc.fencing_epoch() + 1 (migration
// 0003): the current WAL timeline in the high 32 bits, so that a primary promoted after a failover, which
// starts a new timeline, never repeats a token the old primary granted and did not replicate.
const (
	acquireSQL = `WITH granted AS (
	INSERT INTO pgcc.leases AS l (name, holder, token, acquired_at, renewed_at, expires_at)
	VALUES ($1, $2, pgcc.fencing_epoch() + 1, clock_timestamp(), clock_timestamp(), clock_timestamp() + $3::bigint * interval '1 microsecond')
	ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, token = greatest(l.token + 1, excluded.token), acquired_at = excluded.acquired_at,
		renewed_at = excluded.renewed_at, expires_at = excluded.expires_at
	WHERE l.expires_at <= clock_timestamp()
	RETURNING true AS granted, holder, token, acquired_at, expires_at, clock_timestamp() AS now
)
SELECT * FROM granted
UNION ALL
SELECT false, holder, token, acquired_at, expires_at, clock_timestamp() FROM pgcc.leases
WHERE name = $1 AND NOT EXISTS (SELECT FROM granted)`

	renewSQL = `UPDATE pgcc.leases SET renewed_at = clock_timestamp(), expires_at = clock_timestamp() + $3::bigint * interval '1 microsecond'
WHERE name = $1 AND token = $2 AND expires_at > clock_timestamp()
RETURNING expires_at`

	releaseSQL = `UPDATE pgcc.leases SET expires_at = clock_timestamp()
WHERE name = $1 AND token = $2 AND expires_at > clock_timestamp()`

	currentSQL = `SELECT token, holder, expires_at, expires_at <= clock_timestamp() FROM pgcc.leases WHERE name = $1`

	guardSQL = `SELECT t.token, t.holder, t.expires_at, t.expires_at <= clock_timestamp() FROM pgcc.leases t WHERE t.name = $1 FOR SHARE OF t`
)

const (
	// acquirePollMin and acquirePollMax bound the pause between two attempts of Acquire.
	acquirePollMin = 10 * time.Millisecond
	acquirePollMax = time.Second
	// acquireRaces bounds how often TryAcquire re-runs its statement when the lease row changed under it.
	acquireRaces = 3
)

// TryAcquire grants the lease name to holder for ttl if nobody holds it (it never existed, was released, or
// expired), and returns the grant. If another grant is live it returns a [*HeldError] (errors.Is
// [pgcc.ErrHeld]) saying who holds it, since when and until when. A holder that asks again while its own grant
// is live gets the same error: grants are not re-entrant.
//
// name and holder must be non-empty valid UTF-8 without NUL bytes, at most [MaxNameBytes] long; ttl is rounded
// to microseconds and must be at least a millisecond. Anything else is refused with an error matching
// [pgcc.ErrInvalidArgument] before anything is sent. ctx bounds the statement. When db is not a transaction, a
// connection that could not be made is a *pgcc.ConnectionLostError (nothing was sent) and one that failed
// once the statement may have been sent a *pgcc.CommitUnknownError: the grant may have been made, under
// holder's name, and expires unused if nobody learns its token (Renew and Release say the same).
func (ls *Leases) TryAcquire(ctx context.Context, name, holder string, ttl time.Duration) (*Lease, error) {
	l, _, err := ls.tryAcquire(ctx, name, holder, ttl)
	return l, err
}

// tryAcquire is TryAcquire that also returns the database clock when the statement ran.
func (ls *Leases) tryAcquire(ctx context.Context, name, holder string, ttl time.Duration) (*Lease, time.Time, error) {
	if err := ls.check(); err != nil {
		return nil, time.Time{}, err
	}
	if err := checkLease(name, holder, ttl); err != nil {
		return nil, time.Time{}, err
	}
	for range acquireRaces {
		var granted bool
		l := &Lease{Name: name, TTL: ttl, leases: ls}
		var now time.Time
		sent := time.Now()
		err := ls.db.QueryRow(ctx, acquireSQL, name, holder, ttl.Microseconds()).
			Scan(&granted, &l.Holder, &l.Token, &l.Acquired, &l.Expires, &now)
		if errors.Is(err, pgx.ErrNoRows) {
			// The row appeared after the statement's snapshot was taken; ask again.
			continue
		}
		if err != nil {
			return nil, time.Time{}, ls.lost(wrap(err))
		}
		if !granted {
			return nil, now, &HeldError{Name: name, Holder: l.Holder, Since: l.Acquired, Until: l.Expires}
		}
		l.trusted = sent.Add(ttl)
		ls.observe(ctx, pgcc.LeaseAcquired, name, l.Holder, l.Token, l.Expires, nil)
		return l, now, nil
	}
	return nil, time.Time{}, fmt.Errorf("pgcc: lease %q changed %d times while being acquired", name, acquireRaces)
}

// Acquire is [TryAcquire] that waits while the lease is held: it tries again when the current grant is due to
// expire (checking at least every second, in case it is released early) until it gets the lease or ctx ends.
// Each attempt is one statement, which also reads the database clock the wait is computed from. ctx bounds
// the statements and the waits; when it ends, Acquire returns the context's error joined with the last
// [*HeldError]. On a pool, a connection failure (pgcc.ErrConnectionLost, pgcc.ErrCommitUnknown) is tried
// again too, with a backoff up to a second, on another connection: a grant made by an attempt whose reply was
// lost is held under holder's name, so the next attempt waits for it to expire rather than use it.
func (ls *Leases) Acquire(ctx context.Context, name, holder string, ttl time.Duration) (*Lease, error) {
	for failures := 0; ; {
		l, now, err := ls.tryAcquire(ctx, name, holder, ttl)
		var held *HeldError
		var wait time.Duration
		switch {
		case errors.As(err, &held):
			wait = min(max(held.Until.Sub(now), acquirePollMin), acquirePollMax)
		case ctx.Err() == nil && pgfail.Reconnects(ls.db) &&
			(errors.Is(err, pgcc.ErrConnectionLost) || errors.Is(err, pgcc.ErrCommitUnknown)):
			// The connection failed: on a pool, the next attempt gets another one. A grant that may have been
			// made is harmless: it is held under this holder's name, the next attempt finds it held, and it
			// expires unused; the grant Acquire returns is always one whose token it read.
			failures++
			wait = min(acquirePollMin<<min(failures, 7), acquirePollMax)
		default:
			return l, err
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, errors.Join(context.Cause(ctx), err)
		}
	}
}

// Renew extends the grant to TTL from now (database clock) and updates l.Expires. A grant that already
// expired, was released or was taken over cannot be renewed: Renew returns a [*FencedError] (errors.Is
// [pgcc.ErrFenced]) and the holder must stop the work the lease protected. A Lease with a TTL below a
// millisecond (one not made by Acquire) is refused with an error matching [pgcc.ErrInvalidArgument]. ctx
// bounds the statement. [Lease.Keep] renews in the background.
//
// Unlike [Lease.Release], Renew makes one attempt even on a pool: a connection failure is returned
// (pgcc.ErrConnectionLost, pgcc.ErrCommitUnknown) and the grant stays trusted only until its old expiry. A
// renewal is idempotent, so a retry would be safe, but the holder's work goes on between renewals and must
// learn at once that one failed rather than wait inside Renew while the grant runs out; [Lease.Keep] retries
// renewals itself, and cancels the work before the grant can expire.
func (l *Lease) Renew(ctx context.Context) error {
	if err := l.check(); err != nil {
		return err
	}
	sent := time.Now()
	expires, err := l.renew(ctx)
	if err != nil {
		return err
	}
	l.Expires, l.trusted = expires, sent.Add(l.TTL)
	l.leases.observe(ctx, pgcc.LeaseRenewed, l.Name, l.Holder, l.Token, expires, nil)
	return nil
}

// renew runs the renewal and returns the new expiry; it changes nothing in l.
func (l *Lease) renew(ctx context.Context) (time.Time, error) {
	var expires time.Time
	err := l.leases.db.QueryRow(ctx, renewSQL, l.Name, l.Token, l.TTL.Microseconds()).Scan(&expires)
	if errors.Is(err, pgx.ErrNoRows) {
		return time.Time{}, l.leases.fenced(ctx, l.Name, l.Token)
	}
	return expires, l.leases.lost(wrap(err))
}

// Release ends the grant now, so the next Acquire succeeds at once (with a greater token). Releasing a grant
// that already expired or was taken over returns a [*FencedError]: the lease was lost before the work
// finished, which the caller may want to log.
//
// On a pool, a connection failure (pgcc.ErrConnectionLost, pgcc.ErrCommitUnknown: a pooled connection whose
// backend was terminated while idle, a reset, a lost reply) is tried again on another connection, with a
// backoff from a few milliseconds up to a quarter of a second, until the release succeeds or ctx ends. The
// release statement is idempotent (it matches the grant by name and token), so a retry after an attempt whose
// outcome was unknown is safe, and its answer is read by this rule: if such an attempt was sent while the
// grant was still trusted (before the time its last successful grant or renewal was sent plus TTL, on this
// process's clock, so before the grant could have expired) and the retry then finds the lease expired under
// this very token, nobody took it over and the holder's work ended while the grant was live: Release reports
// success, as the earlier attempt most likely did release it. A lease found taken over (another token) is a
// [*FencedError] whatever happened before. Inside the caller's transaction, or on a single *pgx.Conn, nothing
// is retried.
//
// ctx bounds the statements and the backoff sleeps; when it ends during the retries, Release returns
// context.Cause(ctx) joined with the last attempt's error (a *pgcc.ConnectionLostError or
// *pgcc.CommitUnknownError whose Attempts counts the attempts): the lease may still be held, and expires by
// itself at the end of its TTL.
func (l *Lease) Release(ctx context.Context) error {
	if err := l.check(); err != nil {
		return err
	}
	ls := l.leases
	retries := pgfail.Reconnects(ls.db)
	// unknownWhileTrusted: an attempt whose outcome is unknown was sent while the grant was trusted.
	unknownWhileTrusted := false
	for attempts := 1; ; attempts++ {
		sent := time.Now()
		tag, err := ls.db.Exec(ctx, releaseSQL, l.Name, l.Token)
		if err == nil && tag.RowsAffected() == 1 {
			ls.observe(ctx, pgcc.LeaseReleased, l.Name, l.Holder, l.Token, time.Time{}, nil)
			return nil
		}
		if err == nil {
			e, cerr := ls.current(ctx, l.Name, l.Token)
			if cerr == nil && releasedEarlier(e, unknownWhileTrusted) {
				ls.observe(ctx, pgcc.LeaseReleased, l.Name, l.Holder, l.Token, time.Time{}, nil)
				return nil
			}
			// The lease's state could not be read for a connection failure: on a pool, ask again from the
			// release, which affects no row again (a grant under this token cannot become live again).
			if err = ls.lost(cerr); cerr == nil || !retries || !connectionFailure(err) {
				return ls.reportFenced(ctx, e, cerr)
			}
		} else {
			err = ls.lost(wrap(err))
			if !retries || !connectionFailure(err) {
				return err
			}
			if errors.Is(err, pgcc.ErrCommitUnknown) && sent.Before(l.trusted) {
				unknownWhileTrusted = true
			}
		}
		countAttempts(err, attempts)
		if ctx.Err() != nil {
			return ctxEnded(ctx, err)
		}
		t := time.NewTimer(min(releaseRetryMin<<min(attempts-1, 7), releaseRetryMax))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctxEnded(ctx, err)
		}
	}
}

const (
	// releaseRetryMin and releaseRetryMax bound the pause before Release tries a failed connection again.
	releaseRetryMin = 4 * time.Millisecond
	releaseRetryMax = 250 * time.Millisecond
)

// releasedEarlier decides a release retried after connection failures that affected no row: it counts as
// released when an earlier attempt whose outcome was unknown was sent while the grant was trusted
// (unknownWhileTrusted) and the lease row still carries this grant's token, now expired. The token proves that
// no one took the lease over (a takeover, or any new grant, increments it); the trust proves that the holder
// asked for the release before the grant could have expired, so its work did not outlive the grant, whether
// that attempt released it or the expiry came first. Any other state is a fencing: another token, a live
// grant under this token (which the release statement would have matched), or a row that does not exist.
func releasedEarlier(e *FencedError, unknownWhileTrusted bool) bool {
	return unknownWhileTrusted && e.Current == e.Token && e.Expired
}

// connectionFailure reports the errors of lost that another connection may not have: the statement could not
// be sent, or its outcome is unknown.
func connectionFailure(err error) bool {
	return errors.Is(err, pgcc.ErrConnectionLost) || errors.Is(err, pgcc.ErrCommitUnknown)
}

// countAttempts records in err, as typed by lost, how many attempts were made.
func countAttempts(err error, attempts int) {
	var lostErr *pgcc.ConnectionLostError
	var unknownErr *pgcc.CommitUnknownError
	switch {
	case errors.As(err, &lostErr):
		lostErr.Attempts = attempts
	case errors.As(err, &unknownErr):
		unknownErr.Attempts = attempts
	}
}

// ctxEnded is the error of a retry loop whose context ended after the attempt that failed with err.
func ctxEnded(ctx context.Context, err error) error {
	cause := context.Cause(ctx)
	if errors.Is(err, cause) {
		return err
	}
	return errors.Join(cause, err)
}

// current reads the state of the lease name for a token that no longer holds it, as a [*FencedError].
func (ls *Leases) current(ctx context.Context, name string, token int64) (*FencedError, error) {
	e := &FencedError{Name: name, Token: token}
	err := ls.db.QueryRow(ctx, currentSQL, name).Scan(&e.Current, &e.Holder, &e.Expires, &e.Expired)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return e, wrap(err)
	}
	return e, nil
}

// fenced describes the current state of a lease for a token that no longer holds it.
func (ls *Leases) fenced(ctx context.Context, name string, token int64) error {
	e, err := ls.current(ctx, name, token)
	return ls.reportFenced(ctx, e, err)
}

// reportFenced observes and returns the fencing e, joined with err when the lease's state could not be read.
func (ls *Leases) reportFenced(ctx context.Context, e *FencedError, err error) error {
	if err != nil {
		ferr := errors.Join(e, err)
		ls.observe(ctx, pgcc.LeaseFenced, e.Name, "", e.Token, time.Time{}, ferr)
		return ferr
	}
	ls.observe(ctx, pgcc.LeaseFenced, e.Name, "", e.Token, time.Time{}, e)
	return e
}

// Guard checks, inside tx, that token is the live grant of the lease name, and keeps it so until tx ends:
// it share-locks the lease row, so a takeover (which must update the row) waits until tx has committed or
// rolled back. Call it in every transaction whose writes the lease protects, before committing them; a
// holder whose grant expired or was taken over (a process that paused past its TTL, say) gets a
// [*FencedError] (errors.Is [pgcc.ErrFenced]) and must roll back.
//
// Under REPEATABLE READ or SERIALIZABLE, a renewal or takeover committed after tx took its snapshot makes
// Guard fail with SQLSTATE 40001 (serialization_failure), which txn.Run retries with a fresh snapshot.
//
// Guard takes [NoWait], [WithTimeout] and [WithDiagnostics]; ctx bounds the wait for the row lock as in
// lock.Rows. A nil tx or an invalid name is refused with an error matching [pgcc.ErrInvalidArgument].
func Guard(ctx context.Context, tx pgx.Tx, name string, token int64, opts ...GuardOption) error {
	cfg, err := newGuardConfig(opts)
	if err != nil {
		return err
	}
	if lockwait.IsNil(tx) {
		return fmt.Errorf("%w: lease.Guard: no transaction (a nil pgx.Tx)", pgcc.ErrInvalidArgument)
	}
	if err := checkText("lease name", name); err != nil {
		return err
	}
	e := &FencedError{Name: name, Token: token}
	found := false
	ident := pgx.Identifier{"pgcc", "leases"}.Sanitize()
	keys := []pgcc.Key{{name}}
	ks, err := lockwait.NewKeySet(ident, []string{"name"}, keys, nil)
	if err != nil {
		return err
	}
	req := lockwait.Request{
		SQL: guardSQL + cfg.waitClause(), Args: []any{name}, InTx: true, NoWait: cfg.noWait,
		Scan: func(rows pgx.Rows) error {
			if rows.Next() {
				found = true
				return rows.Scan(&e.Current, &e.Holder, &e.Expires, &e.Expired)
			}
			return rows.Err()
		},
		Describe: func(le *pgcc.LockError) { le.Table, le.KeyColumns, le.Keys = ident, []string{"name"}, keys },
		Blockers: func(ctx context.Context, db pgcc.DBTX, self int) ([]pgcc.Blocker, error) {
			return lockwait.RowBlockers(ctx, db, self, ks)
		},
	}
	obs := pgcc.ObservationOf(tx, cfg.observer)
	if err := lockwait.Run(ctx, lockwait.Config{Timeout: cfg.timeout, Diag: cfg.diag, Obs: obs}, tx, req); err != nil {
		return wrap(err)
	}
	if !found || e.Current != token || e.Expired {
		if obs.Observer != nil {
			obs.Observer.ObserveLease(ctx, pgcc.LeaseEvent{Label: obs.Label, Kind: pgcc.LeaseFenced, Name: name, Token: token, Err: e})
		}
		return e
	}
	return nil
}

func (ls *Leases) check() error {
	if ls == nil || lockwait.IsNil(ls.db) {
		return fmt.Errorf("%w: no database handle (a nil *lease.Leases, or lease.New(nil))", pgcc.ErrInvalidArgument)
	}
	return nil
}

func (l *Lease) check() error {
	switch {
	case l == nil:
		return fmt.Errorf("%w: a nil *lease.Lease", pgcc.ErrInvalidArgument)
	case l.leases == nil:
		return fmt.Errorf("%w: lease %q was not granted by Leases.Acquire or TryAcquire", pgcc.ErrInvalidArgument, l.Name)
	case l.TTL < time.Millisecond:
		return fmt.Errorf("%w: lease %q: TTL must be at least 1ms, got %v", pgcc.ErrInvalidArgument, l.Name, l.TTL)
	}
	return l.leases.check()
}

func checkLease(name, holder string, ttl time.Duration) error {
	if err := checkText("lease name", name); err != nil {
		return err
	}
	if err := checkText("lease holder", holder); err != nil {
		return err
	}
	if ttl < time.Millisecond {
		return fmt.Errorf("%w: lease TTL must be at least 1ms, got %v", pgcc.ErrInvalidArgument, ttl)
	}
	return nil
}

// checkText refuses a lease name or holder the table cannot store as given.
func checkText(what, s string) error {
	var problem string
	switch {
	case s == "":
		problem = "is empty"
	case len(s) > MaxNameBytes:
		problem = fmt.Sprintf("is %d bytes long, more than %d", len(s), MaxNameBytes)
	case !utf8.ValidString(s):
		problem = "is not valid UTF-8"
	default:
		for i := 0; i < len(s); i++ {
			if s[i] == 0 {
				problem = "contains a NUL byte"
				break
			}
		}
	}
	if problem == "" {
		return nil
	}
	shown := s
	if len(shown) > 64 {
		shown = shown[:64] + "…"
	}
	return fmt.Errorf("%w: %s %s %s", pgcc.ErrInvalidArgument, what, strconv.Quote(shown), problem)
}

// wrap says what to do when the lease table is missing (SQLSTATE 42P01, or 3F000 for the schema), or the
// function of migration 0003 (42883).
func wrap(err error) error {
	switch pgcc.SQLState(err) {
	case pgerrcode.UndefinedFunction:
		return fmt.Errorf("pgcc: the function pgcc.fencing_epoch() does not exist in this database: apply pgcc's migrations "+
			"up to version 3 with migrations.Up(ctx, pool) from github.com/pgcc/pgcc/migrations: %w", err)
	case pgerrcode.UndefinedTable, pgerrcode.InvalidSchemaName:
		return fmt.Errorf("pgcc: the lease table pgcc.leases does not exist in this database: apply pgcc's migrations first, "+
			"with migrations.Up(ctx, pool) from github.com/pgcc/pgcc/migrations at start-up (or migrations.FS() with your own "+
			"golang-migrate tooling, version table pgcc.schema_migrations): %w", err)
	}
	return err
}

// lost types the error of a statement that runs by itself (autocommit) on a connection that failed: a
// failure to connect is a *pgcc.ConnectionLostError (nothing was sent), any other connection failure a
// *pgcc.CommitUnknownError (it may have been applied). Errors of statements inside the caller's transaction
// are left to whoever runs the transaction.
func (ls *Leases) lost(err error) error { return pgfail.Autocommit(ls.db, err) }

// HeldError is returned by [Leases.TryAcquire] when another holder has the lease.
type HeldError struct {
	// Name is the lease.
	Name string
	// Holder is who holds it.
	Holder string
	// Since is when the holder acquired it, on the database clock.
	Since time.Time
	// Until is when it expires unless renewed, on the database clock.
	Until time.Time
}

// Error implements error.
func (e *HeldError) Error() string {
	return fmt.Sprintf("pgcc: lease %q held by %q since %s until %s", e.Name, e.Holder,
		e.Since.Format(time.RFC3339Nano), e.Until.Format(time.RFC3339Nano))
}

// Is matches [pgcc.ErrHeld] and [pgcc.ErrLockNotAvailable].
func (e *HeldError) Is(target error) bool {
	return target == pgcc.ErrHeld || target == pgcc.ErrLockNotAvailable
}

// FencedError is returned when a lease's token is no longer current: by [Guard] for a write from a holder whose
// lease expired or was taken over, and by [Lease.Renew] and [Lease.Release] on such a lease.
type FencedError struct {
	// Name is the lease.
	Name string
	// Token is the token the caller presented.
	Token int64
	// Current is the lease's current token, 0 if the lease does not exist.
	Current int64
	// Holder is the current holder, "" if the lease does not exist.
	Holder string
	// Expires is when the current grant expires (or expired), on the database clock.
	Expires time.Time
	// Expired reports that the current grant had expired at the time of the check.
	Expired bool
}

// Error implements error.
func (e *FencedError) Error() string {
	switch {
	case e.Current == 0:
		return fmt.Sprintf("pgcc: lease %q fenced: token %d presented but the lease does not exist", e.Name, e.Token)
	case e.Current != e.Token:
		return fmt.Sprintf("pgcc: lease %q fenced: token %d presented, current token is %d held by %q", e.Name, e.Token, e.Current, e.Holder)
	default:
		return fmt.Sprintf("pgcc: lease %q fenced: token %d expired at %s", e.Name, e.Token, e.Expires.Format(time.RFC3339Nano))
	}
}

// Is matches [pgcc.ErrFenced].
func (e *FencedError) Is(target error) bool { return target == pgcc.ErrFenced }
