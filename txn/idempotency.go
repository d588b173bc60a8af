package txn

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/pgfail"
)

// keyTable is the table of idempotency keys, created by migration 0002 of package migrations.
const keyTable = `"pgcc"."idempotency_keys"`

// keyConstraint is its primary key, whose violation means the key has already committed.
const keyConstraint = "idempotency_keys_pkey"

// probeGrace is how long a look-up waits for a transaction that still holds the key (its COMMIT delayed, or
// its client gone while the server has not noticed) before ending that transaction's backend. Ending it is
// safe whatever its state: a transaction that had committed stays committed, one that had not is rolled back,
// and the look-up that follows sees which.
const probeGrace = 250 * time.Millisecond

// purgeBatch is how many expired keys one statement of PurgeIdempotencyKeys deletes.
const purgeBatch = 10000

// keyInsert renders the INSERT that records key, up to the attempt number, which keyedBeginQuery appends with
// the rest. It is sent in one simple-protocol message with BEGIN, which takes no parameters: the key travels
// hex-encoded (only the characters 0-9a-f are spliced, never the caller's text) and is decoded by the server,
// and the retention is an integer formatted here.
func keyInsert(key string, retention time.Duration) string {
	return "INSERT INTO " + keyTable + " (key, expires_at, attempt) SELECT convert_from(decode('" +
		hex.EncodeToString([]byte(key)) + "', 'hex'), 'UTF8'), now() + interval '" +
		strconv.FormatInt(millis(retention), 10) + " milliseconds', "
}

// keyedBeginQuery is the BEGIN of one attempt carrying the idempotency key: BEGIN and its SET LOCALs, then the
// key's INSERT, which also takes a transaction-scoped advisory lock on the attempt's number, by which a later
// look-up can find this transaction's backend in pg_locks (its real process id, even behind a pooler). One
// message, one round trip, and no result set to read.
func (c *config) keyedBeginQuery(attempt int64) string {
	id := strconv.FormatInt(attempt, 10)
	return c.beginQuery + "; " + c.keyInsert + id +
		" FROM (SELECT pg_try_advisory_xact_lock(" + id + ") AS locked) AS attempt_lock WHERE locked IS NOT NULL"
}

// newAttemptID returns a random number naming one attempt, never zero (the look-up's own rows use zero).
func newAttemptID() int64 { return rand.Int64N(math.MaxInt64) + 1 }

// keyBeginFailed turns a failure of the key's INSERT into the caller's answer: the key has already
// committed, or its table is missing. It returns nil for any other error.
func (r *runner) keyBeginFailed(ctx context.Context, err error) error {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return nil
	}
	switch {
	case pgErr.Code == pgerrcode.UniqueViolation && pgErr.ConstraintName == keyConstraint:
		return &pgcc.AlreadyAppliedError{Key: r.cfg.key, AppliedAt: r.appliedAt(ctx)}
	case pgErr.Code == pgerrcode.UndefinedTable, pgErr.Code == pgerrcode.InvalidSchemaName:
		return fmt.Errorf("pgcc: idempotency key: the table %s does not exist; apply pgcc's migrations to this database (migrations.Up, or migrations.FS with your own migration tool): %w", keyTable, err)
	}
	return nil
}

// appliedAt looks up when the key's transaction began, for an [pgcc.AlreadyAppliedError]. It returns zero
// when it cannot tell; the error itself is what matters.
func (r *runner) appliedAt(ctx context.Context) time.Time {
	q, ok := r.db.(pgcc.DBTX)
	if !ok || r.conn != nil && r.conn.IsClosed() {
		return time.Time{}
	}
	var at time.Time
	_ = q.QueryRow(ctx, "SELECT applied_at FROM "+keyTable+" WHERE key = $1", r.cfg.key).Scan(&at)
	return at
}

// resolution is what a look-up of the idempotency key found out about an attempt whose COMMIT got no answer.
type resolution struct {
	committed    bool                      // the attempt committed
	notCommitted bool                      // the attempt certainly did not commit, and no other with the key has
	applied      *pgcc.AlreadyAppliedError // the attempt did not commit, but another with the same key did
	err          error                     // why the look-up could not tell, when none of the above is set
}

// unresolvedError is the error of an attempt whose outcome the look-up could not settle.
func (res resolution) unresolvedError(commitErr error, key string) error {
	return &pgcc.CommitUnknownError{Err: fmt.Errorf("%w (looking up idempotency key %s: %w)", commitErr, pgcc.FormatValue(key), res.err)}
}

// resolve finds out whether the attempt numbered attempt, whose COMMIT on lost got no answer, committed. It
// looks on a fresh connection (one of its own, see probeConn), retrying a look-up
// that fails on the connection with the policy's backoff and attempts, until ctx ends.
func (r *runner) resolve(ctx context.Context, lost *pgx.Conn, attempt int64) resolution {
	for n := 1; ; n++ {
		res, again := r.probe(ctx, lost, attempt)
		if !again || n >= r.cfg.maxAttempts {
			return res
		}
		if err := sleep(ctx, r.cfg.backoff.Delay(n)); err != nil {
			return resolution{err: errors.Join(err, res.err)}
		}
	}
}

// probe looks the key up once. It inserts the key itself in a transaction of its own, ON CONFLICT DO NOTHING:
// a plain SELECT would neither see nor wait for the original's uncommitted row, but an INSERT of the same key
// waits on the unique index until the original transaction ends. Inserted, the original did not commit (the
// probe rolls its row back); a conflict means a committed row, whose attempt number says whose. A wait past
// probeGrace ends the original's backend, found by the advisory lock its BEGIN took, and asks again.
//
// The whole transaction is one round trip (see probeBatch): the look-up runs when the network or the server
// has just failed and may fail again at any moment, so the fewer exchanges it needs once it has a
// connection, the likelier it is to finish.
func (r *runner) probe(ctx context.Context, lost *pgx.Conn, attempt int64) (res resolution, again bool) {
	if err := ctx.Err(); err != nil {
		return resolution{err: context.Cause(ctx)}, false
	}
	conn, release, err := r.probeConn(ctx, lost)
	if err != nil {
		return resolution{err: err}, pgfail.ConnectionFailed(err)
	}
	defer release()
	pc := conn.PgConn()
	results, err := pc.ExecBatch(ctx, probeBatch(r.cfg.key)).ReadAll()
	if err != nil {
		if pc.TxStatus() != 'I' && !pc.IsClosed() {
			rctx, cancel := detached(ctx)
			_, _ = pc.Exec(rctx, "ROLLBACK").ReadAll()
			cancel()
		}
		if isLockNotAvailable(err) {
			terminateAttempt(ctx, conn, attempt)
			return resolution{err: err}, true
		}
		return resolution{err: err}, pgfail.ConnectionFailed(err)
	}
	if len(results) <= probeSelect {
		return resolution{err: fmt.Errorf("idempotency key %s: the look-up got %d results of %d statements", pgcc.FormatValue(r.cfg.key), len(results), probeSelect+2)}, false
	}
	inserted, found := results[probeInsert].CommandTag, results[probeSelect].Rows
	switch {
	case inserted.RowsAffected() == 1:
		return resolution{notCommitted: true}, false
	case len(found) == 0: // purged between the two statements: ask again
		return resolution{err: fmt.Errorf("idempotency key %s: %w", pgcc.FormatValue(r.cfg.key), pgx.ErrNoRows)}, true
	}
	committedBy, err1 := strconv.ParseInt(string(found[0][0]), 10, 64)
	micros, err2 := strconv.ParseInt(string(found[0][1]), 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return resolution{err: fmt.Errorf("idempotency key %s: reading its row: %w", pgcc.FormatValue(r.cfg.key), err)}, false
	}
	if committedBy == attempt {
		return resolution{committed: true}, false
	}
	return resolution{applied: &pgcc.AlreadyAppliedError{Key: r.cfg.key, AppliedAt: time.UnixMicro(micros)}}, false
}

// The statements of probeBatch whose results probe reads.
const (
	probeInsert = 2
	probeSelect = 3
)

// probeBatch is a look-up's transaction as one pipeline, sent with a single Sync: unnamed statements with the
// key as a text parameter, so that even a connection that has prepared nothing answers in one round trip. The
// SELECT is a statement of its own, after the INSERT, so that it sees a row committed while the INSERT
// waited. An error skips what follows it up to the Sync and leaves the transaction failed; probe then rolls it
// back.
func probeBatch(key string) *pgconn.Batch {
	k := [][]byte{[]byte(key)}
	text := []uint32{pgtype.TextOID}
	b := &pgconn.Batch{}
	b.ExecParams("BEGIN ISOLATION LEVEL READ COMMITTED", nil, nil, nil, nil)
	b.ExecParams("SET LOCAL lock_timeout = "+strconv.FormatInt(millis(probeGrace), 10), nil, nil, nil, nil)
	b.ExecParams("INSERT INTO "+keyTable+" (key, expires_at, attempt) VALUES ($1, now(), 0) ON CONFLICT (key) DO NOTHING", k, text, nil, nil)
	b.ExecParams("SELECT attempt, (extract(epoch FROM applied_at) * 1000000)::bigint FROM "+keyTable+" WHERE key = $1", k, text, nil, nil)
	b.ExecParams("ROLLBACK", nil, nil, nil, nil)
	return b
}

// probeConn returns a connection for a look-up, and the function that gives it back. On a *pgxpool.Pool it
// races two ways of getting one and takes the first: a connection of its own, opened with the pool's
// configuration and connect hooks, and one of the pool's. An idle pooled connection is there at once, where
// opening one costs a backend's start (0.4 s and more on a loaded machine, during which the faults that lost
// the COMMIT's answer can strike again); a new connection does not queue behind every other caller of a
// saturated pool, which the load or the faults that lost the answer tend to leave saturated. The loser is
// cancelled, and closed or released if it got a connection anyway; the returned function waits for that, so
// nothing outlives the look-up. A pool of another kind gives its own connections only; a single connection
// is replaced by a new one with its configuration.
func (r *runner) probeConn(ctx context.Context, lost *pgx.Conn) (*pgx.Conn, func(), error) {
	switch db := r.db.(type) {
	case *pgxpool.Pool:
		pc := db.Config()
		return raceConn(ctx, db, pc.ConnConfig, pc.BeforeConnect, pc.AfterConnect, r.cfg.maxAttempts)
	case acquirer:
		c, err := db.Acquire(ctx)
		if err != nil {
			return nil, nil, err
		}
		return c.Conn(), c.Release, nil
	default:
		c, err := connectWith(ctx, lost.Config(), nil, nil)
		if err != nil {
			return nil, nil, err
		}
		return c, closer(ctx, c), nil
	}
}

// gotConn is what one way of getting a look-up's connection came back with.
type gotConn struct {
	conn    *pgx.Conn
	release func()
	err     error
}

// reconnectCap bounds the pause between two tries of one of raceConn's ways to a connection.
const reconnectCap = time.Second

// firstConnectLimit bounds the first try of each of raceConn's own connections, and each later try gets twice
// the previous one's, up to maxConnectLimit: a handshake the network stopped would otherwise hold its way until
// ctx ends (seen under network faults: two connections of a look-up each stuck for the whole 30 s).
const (
	firstConnectLimit = 2 * time.Second
	maxConnectLimit   = 8 * time.Second
)

// hedgeAfter is how long raceConn's first connection of its own may take before it starts a second beside it,
// once.
const hedgeAfter = 300 * time.Millisecond

// raceConn gets a connection three ways at once and returns the first it gets: opening one with cfg,
// acquiring one from pool, and, once, opening a second one with cfg if nothing has come after hedgeAfter (a
// handshake the network lost holds the first until its limit). The returned function gives the connection
// back and waits for the other ways to stop, giving back what they got. It fails only when all three fail.
//
// The first two ways try again for as long as they fail as a connection does (refused, reset during the
// handshake, the server starting up; for the pool, a connection it failed to open) and no other way has
// succeeded, pausing between tries (see retryWay); a try of an own connection also ends after
// firstConnectLimit (then twice that, up to maxConnectLimit). The network or the server that lost COMMIT's
// answer is often failing still: measured under network faults on a loaded machine, a new connection took
// 1–3 s to open and a reset of every connection came every 0.8 s on average, so that one connection opened
// at a time failed 23 times in a row over 30 s, while the pool's, which the other callers keep reopening, were
// getting through. The pauses grow because the look-up must not feed the failure it waits out: when the
// server's accept queue is full, every connection attempt, even one its client has given up, costs the
// server a backend's start; look-ups that retried every 200 ms on three ways were measured making a fifth of
// such a storm's attempts, in step, and pacing them emptied the queue's overflow (docs/reliability.md). Any
// other failure (a refused password, a missing database) ends its way, and so does its tries'th failure:
// without a deadline, a server that stays down must not keep the look-up trying forever.
func raceConn(ctx context.Context, pool *pgxpool.Pool, cfg *pgx.ConnConfig, before func(context.Context, *pgx.ConnConfig) error,
	after func(context.Context, *pgx.Conn) error, tries int) (*pgx.Conn, func(), error) {
	const ways = 3
	rctx, cancel := context.WithCancel(ctx)
	results := make(chan gotConn, ways)
	own := func() func() (gotConn, error) {
		limit := firstConnectLimit
		return func() (gotConn, error) {
			tctx, cancelTry := context.WithTimeout(rctx, limit)
			defer cancelTry()
			limit = min(2*limit, maxConnectLimit)
			c, err := connectWith(tctx, cfg.Copy(), before, after) // a copy per try, as the pool does: before may change it
			if err != nil {
				return gotConn{}, err
			}
			return gotConn{conn: c, release: closer(ctx, c)}, nil
		}
	}
	pooled := func() (gotConn, error) {
		c, err := pool.Acquire(rctx)
		if err != nil {
			return gotConn{}, err
		}
		return gotConn{conn: c.Conn(), release: c.Release}, nil
	}
	go func() { results <- retryWay(rctx, 0, tries, own()) }()
	go func() { results <- retryWay(rctx, hedgeAfter, 1, own()) }()
	go func() { results <- retryWay(rctx, 0, tries, pooled) }()
	var errs []error
	for range ways {
		got := <-results
		if got.err != nil {
			errs = append(errs, got.err)
			continue
		}
		cancel() // the other ways stop as soon as they can
		pending := ways - len(errs) - 1
		return got.conn, func() {
			got.release()
			for range pending {
				if other := <-results; other.err == nil {
					other.release()
				}
			}
		}, nil
	}
	cancel()
	return nil, nil, errors.Join(errs...)
}

// retryWay runs try, after waiting delay, until it succeeds, fails other than as a connection does, has
// failed tries times, or ctx ends. Between two tries it pauses a random duration between half and all of a
// bound that starts at 10 ms and doubles up to reconnectCap: quick while a blip passes, then no more than a
// try a second or so, and look-ups that failed together do not try again together.
func retryWay(ctx context.Context, delay time.Duration, tries int, try func() (gotConn, error)) gotConn {
	if err := sleep(ctx, delay); err != nil {
		return gotConn{err: err}
	}
	bound := 10 * time.Millisecond
	for n := 1; ; n++ {
		got, err := try()
		if err == nil {
			return got
		}
		pause := bound/2 + time.Duration(rand.Int64N(int64(bound/2)+1))
		if n >= tries || ctx.Err() != nil || !pgfail.ConnectionFailed(err) || sleep(ctx, pause) != nil {
			return gotConn{err: err}
		}
		bound = min(2*bound, reconnectCap)
	}
}

// closer returns the function that closes c, bounded like a failed attempt's clean-up.
func closer(ctx context.Context, c *pgx.Conn) func() {
	return func() {
		closeCtx, cancel := detached(ctx)
		defer cancel()
		_ = c.Close(closeCtx)
	}
}

// connectWith opens a connection with cfg, running a pool's BeforeConnect and AfterConnect hooks around it as
// the pool would.
func connectWith(ctx context.Context, cfg *pgx.ConnConfig, before func(context.Context, *pgx.ConnConfig) error,
	after func(context.Context, *pgx.Conn) error) (*pgx.Conn, error) {
	if before != nil {
		if err := before(ctx, cfg); err != nil {
			return nil, err
		}
	}
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if after != nil {
		if err := after(ctx, c); err != nil {
			closeCtx, cancel := detached(ctx)
			defer cancel()
			_ = c.Close(closeCtx)
			return nil, err
		}
	}
	return c, nil
}

// terminateAttempt ends the backend whose transaction holds the advisory lock of attempt, if it still runs.
// Failures are ignored (the role may not be allowed to signal that backend): the look-up then waits for the
// transaction to end by itself, bounded by ctx.
func terminateAttempt(ctx context.Context, conn *pgx.Conn, attempt int64) {
	_, _ = conn.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_locks
		WHERE locktype = 'advisory' AND granted AND objsubid = 1 AND classid = $1 AND objid = $2
		AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`,
		uint32(uint64(attempt)>>32), uint32(uint64(attempt)))
}

// PurgeIdempotencyKeys deletes the idempotency keys whose retention has passed (on the database clock) and
// returns how many it deleted. Run it periodically, say hourly from a job guarded by a lease; a key not yet
// purged keeps refusing its operation after its retention, which is safe. It deletes in statements of at most
// 10,000 keys each, so that no single statement holds many row locks or runs long; on a pool each commits by
// itself. ctx bounds every statement.
func PurgeIdempotencyKeys(ctx context.Context, db pgcc.DBTX) (int64, error) {
	if db == nil {
		return 0, fmt.Errorf("%w: PurgeIdempotencyKeys needs a database handle", pgcc.ErrInvalidArgument)
	}
	var total int64
	for {
		tag, err := db.Exec(ctx, "DELETE FROM "+keyTable+" WHERE key IN (SELECT key FROM "+keyTable+
			" WHERE expires_at < now() LIMIT "+strconv.Itoa(purgeBatch)+" FOR UPDATE SKIP LOCKED)")
		if err != nil {
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) && (pgErr.Code == pgerrcode.UndefinedTable || pgErr.Code == pgerrcode.InvalidSchemaName) {
				return total, fmt.Errorf("pgcc: purge idempotency keys: the table %s does not exist; apply pgcc's migrations to this database: %w", keyTable, err)
			}
			return total, fmt.Errorf("pgcc: purge idempotency keys: %w", err)
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < purgeBatch {
			return total, nil
		}
	}
}
