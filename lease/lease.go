package lease

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/lockwait"
)

// Leases grants named, time-bounded ownership recorded in the table pgcc.leases (created by package
// migrations). A lease outlives transactions and connections, so it suits work that runs for minutes: one
// batch job per project at a time, one leader among replicas. Every grant carries a fencing token that
// [Guard] checks inside the holder's write transactions.
//
// All times are the database's clock (clock_timestamp()), never the caller's.
type Leases struct {
	db pgcc.DBTX
}

// New returns the leases stored in the database behind db, typically a *pgxpool.Pool. Each call of its
// methods is one autocommitted statement on db.
func New(db pgcc.DBTX) *Leases { return &Leases{db: db} }

// Lease is one grant of a named lease. Its methods are not safe for concurrent use.
type Lease struct {
	// Name is the lease's name.
	Name string
	// Holder is who holds it, as given to Acquire.
	Holder string
	// Token is the grant's fencing token. Tokens of one name strictly increase with every grant, release and
	// re-acquisition included.
	Token int64
	// Acquired is when the grant was made, on the database clock.
	Acquired time.Time
	// Expires is when the grant ends unless renewed, on the database clock; Renew moves it.
	Expires time.Time
	// TTL is the duration each renewal extends the grant by, counted from the renewal.
	TTL time.Duration

	leases *Leases
}

// The lease statements. A lease row is never deleted: releasing it only moves its expiry to now, so the next
// grant continues from its token. A grant takes over a row only once it has expired, and the conflicting
// INSERT … ON CONFLICT DO UPDATE locks the row (FOR NO KEY UPDATE), so it waits for every transaction that
// [Guard] let write under the old token.
const (
	acquireSQL = `WITH granted AS (
	INSERT INTO pgcc.leases AS l (name, holder, token, acquired_at, renewed_at, expires_at)
	VALUES ($1, $2, 1, clock_timestamp(), clock_timestamp(), clock_timestamp() + $3::bigint * interval '1 microsecond')
	ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, token = l.token + 1, acquired_at = excluded.acquired_at,
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

	guardSQL = `SELECT token, holder, expires_at, expires_at <= clock_timestamp() FROM pgcc.leases WHERE name = $1 FOR SHARE`
)

const (
	// acquirePollMin and acquirePollMax bound the pause between two attempts of Acquire.
	acquirePollMin = 10 * time.Millisecond
	acquirePollMax = time.Second
	// acquireRaces bounds how often TryAcquire re-runs its statement when the lease row changed under it.
	acquireRaces = 3
)

// TryAcquire grants the lease name to holder for ttl if nobody holds it (it never existed, was released, or
// expired), and returns the grant. If another grant is live it returns a [*HeldError] (errors.Is [pgcc.ErrHeld])
// saying who holds it, since when and until when. A holder that asks again while its own grant is live gets
// the same error: grants are not re-entrant.
//
// ttl is rounded to microseconds and must be at least a millisecond. ctx bounds the statement.
func (ls *Leases) TryAcquire(ctx context.Context, name, holder string, ttl time.Duration) (*Lease, error) {
	if err := checkLease(name, holder, ttl); err != nil {
		return nil, err
	}
	for range acquireRaces {
		var granted bool
		l := &Lease{Name: name, TTL: ttl, leases: ls}
		var now time.Time
		err := ls.db.QueryRow(ctx, acquireSQL, name, holder, ttl.Microseconds()).
			Scan(&granted, &l.Holder, &l.Token, &l.Acquired, &l.Expires, &now)
		if errors.Is(err, pgx.ErrNoRows) {
			// The row appeared after the statement's snapshot was taken; ask again.
			continue
		}
		if err != nil {
			return nil, err
		}
		if !granted {
			return nil, &HeldError{Name: name, Holder: l.Holder, Since: l.Acquired, Until: l.Expires}
		}
		return l, nil
	}
	return nil, fmt.Errorf("pgcc: lease %q changed %d times while being acquired", name, acquireRaces)
}

// Acquire is [TryAcquire] that waits while the lease is held: it tries again when the current grant is due to
// expire (checking at least every second, in case it is released early) until it gets the lease or ctx ends.
// ctx bounds the statements and the waits; when it ends, Acquire returns the context's error joined with the
// last [*HeldError].
func (ls *Leases) Acquire(ctx context.Context, name, holder string, ttl time.Duration) (*Lease, error) {
	for {
		l, err := ls.TryAcquire(ctx, name, holder, ttl)
		var held *HeldError
		if !errors.As(err, &held) {
			return l, err
		}
		var wait time.Duration
		if err := ls.db.QueryRow(ctx, "SELECT (extract(epoch FROM $1::timestamptz - clock_timestamp()) * 1e6)::bigint", held.Until).
			Scan(&wait); err != nil {
			return nil, err
		}
		wait = min(max(time.Duration(wait)*time.Microsecond, acquirePollMin), acquirePollMax)
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
// [pgcc.ErrFenced]) and the holder must stop the work the lease protected. ctx bounds the statement.
func (l *Lease) Renew(ctx context.Context) error {
	var expires time.Time
	err := l.leases.db.QueryRow(ctx, renewSQL, l.Name, l.Token, l.TTL.Microseconds()).Scan(&expires)
	if errors.Is(err, pgx.ErrNoRows) {
		return l.leases.fenced(ctx, l.Name, l.Token)
	}
	if err != nil {
		return err
	}
	l.Expires = expires
	return nil
}

// Release ends the grant now, so the next Acquire succeeds at once (with a greater token). Releasing a grant
// that already expired or was taken over returns a [*FencedError]: the lease was lost before the work
// finished, which the caller may want to log. ctx bounds the statement.
func (l *Lease) Release(ctx context.Context) error {
	tag, err := l.leases.db.Exec(ctx, releaseSQL, l.Name, l.Token)
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return l.leases.fenced(ctx, l.Name, l.Token)
	}
	return nil
}

// fenced describes the current state of a lease for a token that no longer holds it.
func (ls *Leases) fenced(ctx context.Context, name string, token int64) error {
	e := &FencedError{Name: name, Token: token}
	err := ls.db.QueryRow(ctx, currentSQL, name).Scan(&e.Current, &e.Holder, &e.Expires, &e.Expired)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return errors.Join(e, err)
	}
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
// Guard takes WithWait([NoWait]), [WithTimeout] and [WithDiagnostics]; ctx bounds the wait for the row lock
// as in [Rows].
func Guard(ctx context.Context, tx pgx.Tx, name string, token int64, opts ...GuardOption) error {
	cfg, err := newGuardConfig(opts)
	if err != nil {
		return err
	}
	e := &FencedError{Name: name, Token: token}
	found := false
	ident := pgx.Identifier{"pgcc", "leases"}.Sanitize()
	keys := []pgcc.Key{{name}}
	req := lockwait.Request{
		SQL: guardSQL + cfg.waitClause(), Args: []any{name}, InTx: true,
		Scan: func(rows pgx.Rows) error {
			if rows.Next() {
				found = true
				return rows.Scan(&e.Current, &e.Holder, &e.Expires, &e.Expired)
			}
			return rows.Err()
		},
		Describe: func(le *pgcc.LockError) { le.Table, le.KeyColumns, le.Keys = ident, []string{"name"}, keys },
		Blockers: func(ctx context.Context, db pgcc.DBTX, self int) ([]pgcc.Blocker, error) {
			return lockwait.RowBlockers(ctx, db, self, ident, []string{"name"}, keys)
		},
	}
	if err := lockwait.Run(ctx, lockwait.Config{Timeout: cfg.timeout, Diag: cfg.diag}, tx.Conn(), req); err != nil {
		return err
	}
	if !found || e.Current != token || e.Expired {
		return e
	}
	return nil
}

func checkLease(name, holder string, ttl time.Duration) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: a lease needs a name", pgcc.ErrInvalidArgument)
	case holder == "":
		return fmt.Errorf("%w: a lease needs a holder", pgcc.ErrInvalidArgument)
	case ttl < time.Millisecond:
		return fmt.Errorf("%w: lease TTL must be at least 1ms, got %v", pgcc.ErrInvalidArgument, ttl)
	}
	return nil
}

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
